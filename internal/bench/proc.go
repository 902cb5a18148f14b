// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of CPU times in /proc (100 on every Linux architecture Go
// supports).
const clockTicks = 100

// procCPU returns the CPU time (user + system) that process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain anything: parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return ticks(ut + st), nil
}

func ticks(t uint64) time.Duration { return time.Duration(t) * time.Second / clockTicks }

// machineBusy returns the CPU time all cores have spent busy (user, nice, system, irq, softirq,
// steal) since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected format")
	}
	var busy uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system [idle iowait] irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return ticks(busy), nil
}

// procRSS returns the resident set size of process pid (VmRSS).
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// NoFileLimit returns this process's RLIMIT_NOFILE (soft, hard).
func NoFileLimit() (soft, hard uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0
	}
	return rl.Cur, rl.Max
}

// cpuSample is one reading of the CPU counters a scenario reports on.
type cpuSample struct {
	at     time.Time
	server time.Duration // the server processes (--server-pid)
	client time.Duration // this process and its workers
	busy   time.Duration // the whole machine
	// serverOK is false when no server pid was given or one could not be read.
	serverOK bool
}

// cpuUsage is the difference of two samples.
type cpuUsage struct {
	wall                  time.Duration
	server, client, other time.Duration
	serverOK              bool
}

func (a cpuSample) to(b cpuSample) cpuUsage {
	u := cpuUsage{wall: b.at.Sub(a.at), client: b.client - a.client, serverOK: a.serverOK && b.serverOK}
	if u.serverOK {
		u.server = b.server - a.server
	}
	// Other processes: the machine's busy time minus ours and the server's. Ticks are coarse, so
	// clamp at zero.
	u.other = max(0, (b.busy-a.busy)-u.client-u.server)
	return u
}

// pct expresses d as a percentage of one core over the wall time.
func (u cpuUsage) pct(d time.Duration) float64 {
	if u.wall <= 0 {
		return 0
	}
	return 100 * float64(d) / float64(u.wall)
}
