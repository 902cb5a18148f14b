package gateway

import (
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// workers runs the engine's jobs (a connection's frames, in order: nbio hands each connection's
// job list to one executor call at a time) on goroutines that outlive the job.
//
// nbio's default executor starts a goroutine per job when the pool has room and lets it exit when
// its queue is empty. At the rates a messenger sees per connection (a few frames a second on each
// of thousands of sockets) nearly every frame then pays for a new goroutine and, as the handler
// goes through protobuf decoding and the mailbox, for growing and copying its stack: 14% of the
// server's CPU at 2,000 connections and 20,000 msgs/s. Here a finished goroutine parks, most
// recently used first (its stack is the one most likely still grown), and the next job takes it.
//
// The number of goroutines is bounded by the number of connections with a job running (one each:
// nbio never runs two jobs of a connection at once) plus the engine's own few callbacks; at most
// maxIdle of them wait parked, and a goroutine that stayed parked through a whole retire period
// exits (retire): after a burst (a reconnect storm parks up to maxIdle) an idle node does not keep
// their grown stacks.
type workers struct {
	maxIdle int

	mu     sync.Mutex
	idle   []chan func() // LIFO
	closed bool
	// low is the fewest goroutines parked since the last retire: the bottom low of idle were not
	// used since.
	low int

	done    chan struct{} // closed by stop: ends the retire loop
	running atomic.Int32  // goroutines started and not yet exited (tests)
}

// newWorkers makes the executor; with retireEvery > 0, goroutines left parked a whole period
// exit.
func newWorkers(maxIdle int, retireEvery time.Duration) *workers {
	w := &workers{maxIdle: maxIdle, done: make(chan struct{})}
	if retireEvery > 0 {
		go w.retireLoop(retireEvery)
	}
	return w
}

func (w *workers) retireLoop(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
			w.retire()
		}
	}
}

// retire ends the goroutines parked since the last retire and never taken meanwhile.
func (w *workers) retire() {
	w.mu.Lock()
	n := min(w.low, len(w.idle))
	old := slices.Clone(w.idle[:n])
	w.idle = slices.Delete(w.idle, 0, n)
	w.low = len(w.idle)
	w.mu.Unlock()
	for _, ch := range old {
		ch <- nil
	}
}

// Go runs f on a parked goroutine, or on a new one when none is parked. It never blocks.
func (w *workers) Go(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.low = min(w.low, n-1)
		w.mu.Unlock()
		ch <- f // buffered: the parked goroutine takes it
		return
	}
	w.mu.Unlock()
	w.running.Add(1)
	go w.run(f)
}

func (w *workers) run(f func()) {
	defer w.running.Add(-1)
	var ch chan func()
	for {
		w.call(f)
		w.mu.Lock()
		if w.closed || len(w.idle) >= w.maxIdle {
			w.mu.Unlock()
			return
		}
		if ch == nil {
			ch = make(chan func(), 1)
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		if f = <-ch; f == nil {
			return // stop
		}
	}
}

// call runs f; a panic is logged with its stack and does not end the goroutine (nbio recovers a
// connection's job itself; this covers the engine's other callbacks).
func (w *workers) call(f func()) {
	defer func() {
		if r := recover(); r != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			slog.Error("engine job panicked", "panic", fmt.Sprint(r), "stack", string(buf))
		}
	}()
	f()
}

// stop ends the parked goroutines; jobs submitted afterwards still run, each on its own goroutine.
func (w *workers) stop() {
	w.mu.Lock()
	idle := w.idle
	w.idle = nil
	if !w.closed {
		close(w.done)
	}
	w.closed = true
	w.mu.Unlock()
	for _, ch := range idle {
		ch <- nil
	}
}

// parked reports how many goroutines wait for a job (tests).
func (w *workers) parked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}
