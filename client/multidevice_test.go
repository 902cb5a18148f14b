// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
)

// pendingLink is a new device waiting in client.Link.
type pendingLink struct {
	home string
	code chan string
	done chan linkResult
}

type linkResult struct {
	linked client.Linked
	err    error
}

// startLink runs client.Link for a new home against url and returns once the code is known.
func startLink(t *testing.T, url string, noHistory bool) *pendingLink {
	t.Helper()
	p := &pendingLink{home: t.TempDir(), code: make(chan string, 1), done: make(chan linkResult, 1)}
	st, err := store.Open(p.home, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer st.Close()
		l, err := client.Link(context.Background(), st, client.LinkOptions{ServerURL: url, NoHistory: noHistory, PreKeys: 5,
			OnCode: func(code string, _ time.Time) { p.code <- code }})
		p.done <- linkResult{l, err}
	}()
	select {
	case c := <-p.code:
		p.code <- c
	case r := <-p.done:
		t.Fatalf("link: %v", r.err)
	case <-time.After(waitFor):
		t.Fatal("no link code")
	}
	return p
}

func (p *pendingLink) theCode() string { c := <-p.code; p.code <- c; return c }

// wait returns Link's result.
func (p *pendingLink) wait(t *testing.T) linkResult {
	t.Helper()
	select {
	case r := <-p.done:
		return r
	case <-time.After(waitFor):
		t.Fatal("Link did not return")
		return linkResult{}
	}
}

// linkDevice links a new device to primary's account through url and returns it, not running.
func linkDevice(t *testing.T, url string, primary *device, name string, noHistory bool, cfg client.Config) (*device, *client.Approved) {
	t.Helper()
	p := startLink(t, url, noHistory)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ap, err := primary.c.ApproveLink(ctx, p.theCode(), name)
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	r := p.wait(t)
	if r.err != nil {
		t.Fatalf("link: %v", r.err)
	}
	if r.linked.Name != primary.name || r.linked.DeviceID != ap.DeviceID || r.linked.DeviceName != name {
		t.Fatalf("linked %+v, approved %+v", r.linked, ap)
	}
	return &device{t: t, name: primary.name + "/" + name, home: p.home, cfg: cfg}, ap
}

func (d *device) nextMessageFrom(from string) *client.Message {
	d.t.Helper()
	m := d.nextMessage()
	if m.From != from {
		d.t.Fatalf("%s: message %s from %s, want from %s", d.name, m.ID, m.From, from)
	}
	return m
}

func ctxT() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), waitFor)
}

// Link and approve; then messages to the account reach every device, and a message sent from one
// device appears on the account's other devices as a sent message. The contact is told of the new
// device and the safety number changes; both devices agree on it.
func TestLinkFanOutAndSentCopies(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	bob.waitQueueEmpty()
	id := bob.send("alice", "before the laptop")
	alice.nextMessageFrom("bob")
	bob.waitDelivered(id)
	ctx, cancel := ctxT()
	defer cancel()
	sn1, err := bob.c.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}

	laptop, ap := linkDevice(t, srv.URL(), alice, "laptop", true, client.Config{})
	laptop.start()
	laptop.waitQueueEmpty()
	if a := laptop.c.Account(); a.Primary || a.Name != "alice" || a.DeviceID != ap.DeviceID {
		t.Fatalf("laptop account %+v", a)
	}

	devs, err := alice.c.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || !devs[0].Primary || !devs[0].This || devs[1].ID != ap.DeviceID || devs[1].Name != "laptop" || devs[1].LinkedAt.IsZero() {
		t.Fatalf("devices: %+v", devs)
	}

	// Bob → alice reaches both devices (bob's stale list is refetched without him noticing).
	id = bob.send("alice", "to both")
	for _, d := range []*device{alice, laptop} {
		if m := d.nextMessageFrom("bob"); m.ID != id || m.Text != "to both" || m.Outgoing {
			t.Fatalf("%s got %+v", d.name, m)
		}
	}
	bob.waitDelivered(id)
	select {
	case ev := <-bob.idents:
		if ev.Name != "alice" || !ev.NewDevice || ev.DeviceID != ap.DeviceID {
			t.Fatalf("bob's identity event: %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("bob was not told of alice's new device")
	}
	sn2, err := bob.c.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	sn3, err := laptop.c.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if sn2 == sn1 || sn2 != sn3 {
		t.Fatalf("safety numbers: before %s, bob's after %s, the laptop's %s", sn1, sn2, sn3)
	}

	// Alice's phone → bob: bob gets it, the laptop shows it as sent to bob.
	id = alice.send("bob", "from the phone")
	if m := bob.nextMessageFrom("alice"); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
	if m := laptop.nextMessage(); m.ID != id || !m.Outgoing || m.To != "bob" || m.From != "alice" || m.Text != "from the phone" {
		t.Fatalf("laptop got %+v", m)
	}
	alice.waitDelivered(id)
	// The laptop → bob: the phone shows it as sent.
	id = laptop.send("bob", "from the laptop")
	if m := bob.nextMessageFrom("alice"); m.ID != id || m.FromDevice != ap.DeviceID {
		t.Fatalf("bob got %+v", m)
	}
	if m := alice.nextMessage(); m.ID != id || !m.Outgoing || m.To != "bob" {
		t.Fatalf("phone got %+v", m)
	}
	laptop.waitDelivered(id)
	for _, d := range []*device{alice, laptop, bob} {
		d.noMoreMessages()
		d.noDecryptFailures()
	}
	// Shown once: the copies are in Unseen until claimed, like received messages.
	unseen, err := laptop.c.Unseen(10)
	if err != nil {
		t.Fatal(err)
	}
	var out int
	for _, m := range unseen {
		if m.Outgoing {
			out++
		}
	}
	if out != 1 {
		t.Fatalf("laptop's unseen sent copies: %d, want 1", out)
	}
}

// A link code is single use; a mistyped secret (the same as a forged offer: the MAC does not
// match) is refused before anything is sent, and the real code still works after it; a companion
// cannot approve.
func TestLinkReuseForgedAndCompanion(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	alice.waitQueueEmpty()
	p := startLink(t, srv.URL(), true)
	code := p.theCode()
	ctx, cancel := ctxT()
	defer cancel()

	// The same link id with another secret: the offer's MAC does not match.
	id, _, err := e2ee.ParseLinkCode(code)
	if err != nil {
		t.Fatal(err)
	}
	other, err := e2ee.NewLinkSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.ApproveLink(ctx, e2ee.FormatLinkCode(id, other), "evil"); !errors.Is(err, client.ErrLinkMismatch) {
		t.Fatalf("approve with a wrong secret: %v", err)
	}
	if devs, err := alice.c.Devices(ctx); err != nil || len(devs) != 1 {
		t.Fatalf("devices after a refused approval: %+v %v", devs, err)
	}
	// The code as a person may type it: lower case, spaces instead of dashes.
	typed := strings.ToLower(strings.ReplaceAll(code, "-", " "))
	if _, err := alice.c.ApproveLink(ctx, typed, "tablet"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if r := p.wait(t); r.err != nil {
		t.Fatalf("link: %v", r.err)
	}
	if _, err := alice.c.ApproveLink(ctx, code, "again"); !errors.Is(err, client.ErrLinkExpired) {
		t.Fatalf("second approval with the same code: %v", err)
	}
	tablet := &device{t: t, name: "alice/tablet", home: p.home}
	tablet.start()
	tablet.waitQueueEmpty()
	p2 := startLink(t, srv.URL(), true)
	if _, err := tablet.c.ApproveLink(ctx, p2.theCode(), "x"); !errors.Is(err, client.ErrNotPrimary) {
		t.Fatalf("approve from a companion: %v", err)
	}
}

// A code nobody approves expires: Link returns ErrLinkExpired.
func TestLinkExpires(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.LinkTTL.Duration = time.Second }))
	p := startLink(t, srv.URL(), true)
	if r := p.wait(t); !errors.Is(r.err, client.ErrLinkExpired) {
		t.Fatalf("unapproved link: %v", r.err)
	}
}

// Removal: the removed device's Run ends with ErrDeviceRemoved; a contact's next send reaches
// only the remaining device and its session with the removed one is deleted; the outbox does not
// wait for the removed device's receipt.
func TestRemoveDevice(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	laptop, ap := linkDevice(t, srv.URL(), alice, "laptop", true, client.Config{})
	laptop.start()
	laptop.waitQueueEmpty()
	id := bob.send("alice", "to both")
	alice.nextMessageFrom("bob")
	laptop.nextMessageFrom("bob")
	bob.waitDelivered(id)
	ctx, cancel := ctxT()
	defer cancel()
	if err := laptop.c.RemoveDevice(ctx, alice.c.Account().DeviceID); !errors.Is(err, client.ErrNotPrimary) {
		t.Fatalf("a companion removing the primary: %v", err)
	}

	// Bob's message to the laptop while it goes: the laptop is stopped, so it never receipts.
	if err := laptop.c.Flush(ctx); err != nil { // its receipt of "to both" has left
		t.Fatal(err)
	}
	laptop.stop()
	pending := bob.send("alice", "the laptop never reads this")
	alice.nextMessageFrom("bob")
	// Delivered once any of alice's devices has it; kept in the outbox for the laptop's receipt.
	bob.waitDelivered(pending)
	if n := bob.outboxLen(); n != 1 {
		t.Fatalf("bob's outbox holds %d entries, want the one the laptop has not receipted", n)
	}
	if err := alice.c.RemoveDevice(ctx, ap.DeviceID); err != nil {
		t.Fatal(err)
	}
	laptop.start()
	select {
	case err := <-laptop.runErr:
		if !errors.Is(err, client.ErrDeviceRemoved) && !errors.Is(err, client.ErrAuthFailed) {
			t.Fatalf("removed device's Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the removed device kept running")
	}
	id = bob.send("alice", "after the removal")
	if m := alice.nextMessageFrom("bob"); m.ID != id {
		t.Fatalf("alice got %+v", m)
	}
	bob.waitDelivered(id)
	select {
	case ev := <-bob.changed:
		if ev.Name != "alice" || !slices.Equal(ev.Removed, []string{ap.DeviceID}) {
			t.Fatalf("bob's device change event: %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("bob was not told alice removed a device")
	}
	err := bob.st.View(func(tx *store.Tx) error {
		if tx.SessionRecord("alice", ap.DeviceID) != nil {
			t.Error("bob still has a session with the removed device")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := bob.outboxLen(); n != 0 {
		t.Fatalf("bob's outbox holds %d entries: it waits for the removed device", n)
	}
	devs, err := alice.c.Devices(ctx)
	if err != nil || len(devs) != 1 {
		t.Fatalf("alice's devices: %+v %v", devs, err)
	}
}

// A device is linked to the recipient in the middle of a burst: the sender's sends go stale,
// are re-encrypted and retried without it noticing; nothing is lost, nothing is shown twice, and
// each device sees the messages in order.
func TestStaleListRetryUnderBurst(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	bob.waitQueueEmpty()
	alice.send("bob", "warm-up")
	bob.nextMessage()
	const n = 80
	var ids []string
	for i := range n {
		id, err := alice.c.Enqueue("bob", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if i == n/4 {
			tablet, _ := linkDevice(t, srv.URL(), bob, "tablet", true, client.Config{})
			tablet.start()
			defer func() {
				// The tablet got a suffix of the burst (those sent after its addition), in order.
				var got []string
				for len(got) == 0 || got[len(got)-1] != ids[n-1] {
					got = append(got, tablet.nextMessageFrom("alice").ID)
				}
				first := slices.Index(ids, got[0])
				if first < 0 || !slices.Equal(got, ids[first:]) {
					t.Errorf("tablet's messages are not a suffix of the burst in order: %d messages from %d", len(got), first)
				}
				tablet.noMoreMessages()
				tablet.noDecryptFailures()
			}()
		}
	}
	ctx, cancel := ctxT()
	defer cancel()
	if err := alice.c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if m := bob.nextMessageFrom("alice"); m.ID != id || m.Text != fmt.Sprint(i) {
			t.Fatalf("bob's message %d: %s %q, want %s", i, m.ID, m.Text, id)
		}
	}
	bob.noMoreMessages()
	alice.noDecryptFailures()
	select {
	case ev := <-alice.failed:
		t.Fatalf("a send failed: %+v", ev)
	default:
	}
}

// History: after approval the primary sends the new device the last HistoryLimit messages of
// each chat; they are in its history (not shown as new), nowhere else, and the server's data
// directory never holds their plaintext.
func TestHistoryTransfer(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{cfg: client.Config{HistoryLimit: 10}}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	carol := register(t, srv, "carol", devOpts{}).start()
	alice.waitQueueEmpty()
	canary := fmt.Sprintf("history-canary-%d", time.Now().UnixNano())
	var bobChat, carolChat []string
	for i := range 15 {
		bobChat = append(bobChat, alice.send("bob", fmt.Sprintf("%s to bob %d", canary, i)))
		bob.nextMessage()
		if i < 3 {
			carolChat = append(carolChat, carol.send("alice", fmt.Sprintf("%s from carol %d", canary, i)))
			alice.nextMessage()
		}
	}
	big := strings.Repeat("x", 40<<10) // large messages: several chunks
	for range 4 {
		bobChat = append(bobChat, alice.send("bob", big))
		bob.nextMessage()
	}
	laptop, ap := linkDevice(t, srv.URL(), alice, "laptop", false, client.Config{})
	if ap.HistoryChunks < 2 {
		t.Fatalf("history queued in %d chunks", ap.HistoryChunks)
	}
	ctx, cancel := ctxT()
	defer cancel()
	if err := alice.c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	laptop.start()
	var last *client.HistoryReceived
	for chunks := 0; last == nil || !last.Last; chunks++ {
		select {
		case h := <-laptop.history:
			if h.Chunk != chunks+1 {
				t.Fatalf("history chunk %d arrived as number %d", h.Chunk, chunks+1)
			}
			last = h
		case <-time.After(waitFor):
			t.Fatalf("history: %d chunks arrived, not the last", chunks)
		}
	}
	if last.Chunk != ap.HistoryChunks {
		t.Fatalf("%d chunks arrived, %d sent", last.Chunk, ap.HistoryChunks)
	}
	hist, err := laptop.c.History(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var gotBob, gotCarol []string
	for _, m := range hist {
		switch {
		case m.Outgoing && m.To == "bob":
			gotBob = append(gotBob, m.ID)
		case !m.Outgoing && m.From == "carol":
			gotCarol = append(gotCarol, m.ID)
		default:
			t.Fatalf("unexpected history entry %+v", m)
		}
	}
	if want := bobChat[len(bobChat)-10:]; !slices.Equal(gotBob, want) {
		t.Fatalf("laptop's history with bob: %d messages, want the last 10 in order", len(gotBob))
	}
	if !slices.Equal(gotCarol, carolChat) {
		t.Fatalf("laptop's history with carol: %v, want %v", gotCarol, carolChat)
	}
	// History is not news: nothing is unseen, no Message event.
	laptop.waitQueueEmpty()
	laptop.noMoreMessages()
	if u, err := laptop.c.Unseen(10); err != nil || len(u) != 0 {
		t.Fatalf("unseen after history: %d %v", len(u), err)
	}
	// Only there: bob and carol saw no history, and the server never held plaintext.
	bob.noMoreMessages()
	carol.noMoreMessages()
	srv.Stop()
	if f := containsBytes(t, srv.DataDir(), []byte(canary)); f != "" {
		t.Fatalf("history plaintext in the server's data directory: %s", f)
	}
}

// containsBytes reports a file under dir that contains needle ("" if none).
func containsBytes(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, needle) {
			found = path
		}
		return nil
	})
	return found
}

// An account has at most max_devices devices (default 5): the 6th is refused with
// ErrTooManyDevices, and the new device's Link is not approved.
func TestSixthDeviceRefused(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	alice.waitQueueEmpty()
	for i := range 4 {
		linkDevice(t, srv.URL(), alice, fmt.Sprintf("d%d", i+2), true, client.Config{})
	}
	p := startLink(t, srv.URL(), true)
	ctx, cancel := ctxT()
	defer cancel()
	if _, err := alice.c.ApproveLink(ctx, p.theCode(), "sixth"); !errors.Is(err, client.ErrTooManyDevices) {
		t.Fatalf("6th device: %v", err)
	}
	if devs, err := alice.c.Devices(ctx); err != nil || len(devs) != 5 {
		t.Fatalf("devices: %d %v", len(devs), err)
	}
}

// Linking across a cluster: the new device waits on one node, the primary approves through
// another; then messages reach both devices.
func TestLinkAcrossClusterNodes(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	alice := registerAt(t, c.Node(1).URL(), "alice", devOpts{}).start()
	bob := registerAt(t, c.Node(2).URL(), "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	bob.waitQueueEmpty()
	laptop, _ := linkDevice(t, c.Node(0).URL(), alice, "laptop", true, client.Config{})
	laptop.start()
	laptop.waitQueueEmpty()
	id := bob.send("alice", "across nodes")
	for _, d := range []*device{alice, laptop} {
		if m := d.nextMessageFrom("bob"); m.ID != id {
			t.Fatalf("%s got %+v", d.name, m)
		}
	}
	bob.waitDelivered(id)
	id = laptop.send("bob", "back")
	if m := bob.nextMessageFrom("alice"); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
	if m := alice.nextMessage(); m.ID != id || !m.Outgoing {
		t.Fatalf("alice got %+v", m)
	}
}

// A companion removes itself: its Run ends with ErrDeviceRemoved, the primary re-signs the list
// without it when told of the change, and a contact's next message reaches the primary only.
func TestCompanionRemovesItself(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	tablet, ap := linkDevice(t, srv.URL(), alice, "tablet", true, client.Config{})
	tablet.start()
	tablet.waitQueueEmpty()
	ctx, cancel := ctxT()
	defer cancel()
	if err := tablet.c.RemoveDevice(ctx, ap.DeviceID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-tablet.runErr:
		if !errors.Is(err, client.ErrDeviceRemoved) {
			t.Fatalf("the removed tablet's Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the removed tablet kept running")
	}
	// The primary learns of it (DeviceListChanged) and publishes a list without the tablet.
	for {
		select {
		case ev := <-alice.changed:
			if ev.Name != "alice" || !slices.Equal(ev.Removed, []string{ap.DeviceID}) {
				continue
			}
		case <-time.After(waitFor):
			t.Fatal("the primary did not re-sign its list without the tablet")
		}
		break
	}
	alice.st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		if a.DeviceListVersion != 3 || bytes.Contains(a.DeviceList, []byte(ap.DeviceID)) {
			t.Errorf("the primary's list: version %d, still names the tablet", a.DeviceListVersion)
		}
		return nil
	})
	id := bob.send("alice", "after the tablet left")
	if m := alice.nextMessageFrom("bob"); m.ID != id {
		t.Fatalf("alice got %+v", m)
	}
	bob.waitDelivered(id)
	if n := bob.outboxLen(); n != 0 {
		t.Fatalf("bob's outbox holds %d entries", n)
	}
}

// A companion that was offline while another device was linked gets that device's sent copies
// before it has heard of it: they wait for the fetched list, then show, once.
func TestSentCopyFromDeviceLinkedWhileOffline(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	tablet, _ := linkDevice(t, srv.URL(), alice, "tablet", true, client.Config{})
	tablet.start()
	tablet.waitQueueEmpty()
	tablet.stop()
	laptop, ap := linkDevice(t, srv.URL(), alice, "laptop", true, client.Config{})
	laptop.start()
	id := laptop.send("bob", "from the new laptop")
	bob.nextMessageFrom("alice")
	alice.nextMessage()
	tablet.start()
	if m := tablet.nextMessage(); m.ID != id || !m.Outgoing || m.To != "bob" || m.FromDevice != ap.DeviceID {
		t.Fatalf("tablet got %+v", m)
	}
	tablet.waitQueueEmpty()
	tablet.noMoreMessages()
	tablet.noDecryptFailures()
	hist, err := tablet.c.History(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1 || hist[0].ID != id {
		t.Fatalf("tablet's history: %+v", hist)
	}
}
