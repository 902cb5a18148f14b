package gateway

import (
	"runtime"
	"sync"
	"testing"
)

// TestWorkersReuseParkedGoroutines: a finished job's goroutine parks and runs the next job, up to
// maxIdle parked; stop ends them, and jobs after stop still run.
func TestWorkersReuseParkedGoroutines(t *testing.T) {
	w := newWorkers(2, 0)
	// Jobs one after another: one goroutine, parked between them.
	for range 3 {
		done := make(chan struct{})
		w.Go(func() { close(done) })
		<-done
		waitParked(t, w, 1)
	}

	// Three jobs at once: three goroutines; two park afterwards, the third exits.
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 3 {
		wg.Add(1)
		w.Go(func() { defer wg.Done(); <-release })
	}
	if got := w.parked(); got != 0 {
		t.Fatalf("parked while all three run = %d, want 0", got)
	}
	close(release)
	wg.Wait()
	waitParked(t, w, 2)

	// A panicking job does not take its goroutine's loop down.
	done := make(chan struct{})
	w.Go(func() { panic("boom") })
	w.Go(func() { close(done) })
	<-done

	w.stop()
	if got := w.parked(); got != 0 {
		t.Fatalf("parked after stop = %d, want 0", got)
	}
	ran := make(chan struct{})
	w.Go(func() { close(ran) })
	<-ran
	if got := w.parked(); got != 0 {
		t.Fatalf("a job after stop parked its goroutine (%d parked)", got)
	}
}

// waitParked waits until n goroutines are parked: a goroutine parks just after its job returns.
func waitParked(t *testing.T, w *workers, n int) {
	t.Helper()
	for i := 0; w.parked() != n; i++ {
		if i > 1e6 {
			t.Fatalf("parked = %d, want %d", w.parked(), n)
		}
		runtime.Gosched()
	}
}

// TestWorkersRetireUnused: retire ends the goroutines that stayed parked since the last retire
// and keeps the ones taken meanwhile; the retired goroutines exit.
func TestWorkersRetireUnused(t *testing.T) {
	w := newWorkers(16, 0)
	defer w.stop()
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 10 {
		wg.Add(1)
		w.Go(func() { defer wg.Done(); <-release })
	}
	close(release)
	wg.Wait()
	waitParked(t, w, 10)
	w.retire() // the first period: the ten were taken during it (parked count fell to 0)
	if got := w.parked(); got != 10 {
		t.Fatalf("parked after a busy period = %d, want 10", got)
	}
	// One job during the next period: one goroutine taken, nine never.
	done := make(chan struct{})
	w.Go(func() { close(done) })
	<-done
	waitParked(t, w, 10)
	w.retire()
	if got := w.parked(); got != 1 {
		t.Fatalf("parked after retiring the unused = %d, want 1", got)
	}
	for i := 0; w.running.Load() != 1; i++ {
		if i > 1e6 {
			t.Fatalf("goroutines running = %d, want 1 (the retired ones must exit)", w.running.Load())
		}
		runtime.Gosched()
	}
	// The one kept still runs jobs.
	done = make(chan struct{})
	w.Go(func() { close(done) })
	<-done
	waitParked(t, w, 1)
	if got := w.running.Load(); got != 1 {
		t.Fatalf("goroutines running = %d, want 1 (the parked one reused)", got)
	}
}

// TestConnListRemove: g.conns keeps every open connection at its index; removing one moves the
// last into its place, and removing it twice reports it absent.
func TestConnListRemove(t *testing.T) {
	g := &Gateway{}
	cs := make([]*conn, 5)
	for i := range cs {
		cs[i] = &conn{idx: -1}
		g.addConnLocked(cs[i])
	}
	if !g.removeConnLocked(cs[1]) || g.removeConnLocked(cs[1]) {
		t.Fatal("remove: want present once, then absent")
	}
	if g.removeConnLocked(&conn{idx: 0}) {
		t.Fatal("a connection never added reported present")
	}
	if len(g.conns) != 4 {
		t.Fatalf("%d connections, want 4", len(g.conns))
	}
	for i, c := range g.conns {
		if int(c.idx) != i || c == cs[1] {
			t.Fatalf("conns[%d] has idx %d (removed one present: %v)", i, c.idx, c == cs[1])
		}
	}
	for _, c := range []*conn{cs[4], cs[0], cs[2], cs[3]} {
		if !g.removeConnLocked(c) {
			t.Fatal("an open connection reported absent")
		}
	}
	if len(g.conns) != 0 {
		t.Fatalf("%d connections left, want 0", len(g.conns))
	}
}
