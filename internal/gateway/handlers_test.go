// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"reflect"
	"testing"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Every frame a client may send (body field 40 and up) has a handler on an authenticated
// connection; before authentication only Register, Auth, StartLink and Recover do, and while linking only
// Ping. A frame type added to the proto without a handler fails here.
func TestHandlerTables(t *testing.T) {
	body := (&pb.Frame{}).ProtoReflect().Descriptor().Oneofs().ByName("body")
	clientFrames := 0
	for i := range body.Fields().Len() {
		fd := body.Fields().Get(i)
		f := &pb.Frame{}
		m := f.ProtoReflect()
		m.Set(fd, m.NewField(fd))
		key := reflect.TypeOf(f.Body)
		fromClient := fd.Number() >= 40
		if _, ok := authedFrames[key]; ok != fromClient {
			t.Errorf("%s: handled on an authenticated connection: %v, sent by clients: %v", fd.Name(), ok, fromClient)
		}
		if fromClient {
			clientFrames++
		}
		_, hs := handshakeFrames[key]
		if want := fd.Name() == "register" || fd.Name() == "auth" || fd.Name() == "start_link" || fd.Name() == "recover"; hs != want {
			t.Errorf("%s: handled before authentication: %v, want %v", fd.Name(), hs, want)
		}
		if _, ok := linkingFrames[key]; ok != (fd.Name() == "ping") {
			t.Errorf("%s: handled while linking: %v", fd.Name(), ok)
		}
	}
	if clientFrames != len(authedFrames) {
		t.Errorf("%d client frames, %d authenticated handlers", clientFrames, len(authedFrames))
	}
}
