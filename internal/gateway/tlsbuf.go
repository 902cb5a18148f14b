// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// crypto/tls keeps the read buffers of a connection for its whole life: rawInput (ciphertext)
// grows to hold the largest record read, ClientHello included, hand (handshake messages) to hold
// the ClientHello, and input points into rawInput. That is ~4 KiB per idle connection after the
// handshake, more after a large record, against an idle budget of a few KiB in all. Nothing in the
// package's API lets them go, so releaseTLSReadBuffers drops them while they are empty, through
// field offsets found by reflection and checked by type. Should a Go release rename or retype a
// field, tlsReadBuffers.ok is false, the buffers are simply kept, and TestTLSReadBuffersFound fails
// to say so.
var tlsReadBuffers = func() (b struct {
	rawInput, input, hand uintptr
	ok                    bool
}) {
	typ := reflect.TypeFor[tls.Conn]()
	field := func(name string, want reflect.Type) (uintptr, bool) {
		f, ok := typ.FieldByName(name)
		if !ok || f.Type != want || len(f.Index) != 1 {
			return 0, false
		}
		return f.Offset, true
	}
	var ok1, ok2, ok3 bool
	b.rawInput, ok1 = field("rawInput", reflect.TypeFor[bytes.Buffer]())
	b.input, ok2 = field("input", reflect.TypeFor[bytes.Reader]())
	b.hand, ok3 = field("hand", reflect.TypeFor[bytes.Buffer]())
	b.ok = ok1 && ok2 && ok3
	return b
}()

// releaseTLSReadBuffers drops tc's read buffers if they hold nothing. The caller must be tc's only
// reader, between two reads (or after the handshake): crypto/tls touches these fields only while
// reading (under its input lock), never while writing or closing.
func releaseTLSReadBuffers(tc *tls.Conn) {
	if !tlsReadBuffers.ok {
		return
	}
	p := unsafe.Pointer(tc)
	raw := (*bytes.Buffer)(unsafe.Add(p, tlsReadBuffers.rawInput))
	in := (*bytes.Reader)(unsafe.Add(p, tlsReadBuffers.input))
	hand := (*bytes.Buffer)(unsafe.Add(p, tlsReadBuffers.hand))
	if in.Len() == 0 {
		*in = bytes.Reader{} // it points into rawInput's array
		if raw.Len() == 0 && raw.Cap() > 0 {
			*raw = bytes.Buffer{}
		}
	}
	if hand.Len() == 0 && hand.Cap() > 0 {
		*hand = bytes.Buffer{}
	}
}
