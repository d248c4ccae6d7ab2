package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat. It is 100 on
// every Linux architecture Go supports (USER_HZ, not the kernel's HZ).
const userHZ = 100

// procSample is what /proc says about the server process.
type procSample struct {
	ok      bool
	rssKiB  int64
	threads int64
	cpu     float64 // user+system seconds since the process started
}

func readProc(pid int) procSample {
	if pid <= 0 {
		return procSample{}
	}
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.rssKiB, _ = strconv.ParseInt(f[0], 10, 64)
		case "Threads":
			s.threads, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s
	}
	// The command name, field 2, may hold spaces: fields are counted
	// after its closing parenthesis.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return s
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	s.cpu = (ut + st) / userHZ
	s.ok = true
	return s
}

// readProcs sums readProc over the processes of one contender (its nodes
// and their Redis): a reading is ok only if every process could be read.
func readProcs(pids []int) procSample {
	if len(pids) == 0 {
		return procSample{}
	}
	sum := procSample{ok: true}
	for _, pid := range pids {
		s := readProc(pid)
		sum.ok = sum.ok && s.ok
		sum.rssKiB += s.rssKiB
		sum.threads += s.threads
		sum.cpu += s.cpu
	}
	return sum
}

// pidList writes pids as -pid takes them.
func pidList(pids []int) string {
	var parts []string
	for _, p := range pids {
		parts = append(parts, strconv.Itoa(p))
	}
	return strings.Join(parts, ",")
}

// selfCPU is the generator's own user+system CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// raiseNoFile lifts RLIMIT_NOFILE to its hard limit (and tries beyond it,
// which works as root), returning the soft limit now in force.
func raiseNoFile(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if want > rl.Max {
		try := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try) == nil {
			return want
		}
	}
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur
}

// cpuMeter measures a window of wall time, the generator's CPU and the
// server's CPU.
type cpuMeter struct {
	pids   []int
	t0     time.Time
	self0  float64
	serv0  procSample
	wall   float64
	self   float64 // seconds
	server float64 // seconds, NaN without -pid
}

func startMeter(pids []int) *cpuMeter {
	return &cpuMeter{pids: pids, t0: time.Now(), self0: selfCPU(), serv0: readProcs(pids)}
}

func (m *cpuMeter) stop() *cpuMeter {
	m.wall = time.Since(m.t0).Seconds()
	m.self = selfCPU() - m.self0
	s := readProcs(m.pids)
	m.server = nan
	if s.ok && m.serv0.ok {
		m.server = s.cpu - m.serv0.cpu
	}
	return m
}

// genLoad is the generator's CPU use over the window, as a fraction of one
// core.
func (m *cpuMeter) genLoad() float64 {
	if m.wall <= 0 {
		return 0
	}
	return m.self / m.wall
}

// serverGoroutines sums the goroutine counts of the servers' /debug/stats
// (urls comma-separated); ok only if every one answered.
func serverGoroutines(urls string) (int64, bool) {
	if urls == "" {
		return 0, false
	}
	var sum int64
	for u := range strings.SplitSeq(urls, ",") {
		n, ok := serverGoroutines1(strings.TrimSpace(u))
		if !ok {
			return 0, false
		}
		sum += n
	}
	return sum, true
}

// serverGoroutines1 reads the goroutine count from a server's /debug/stats.
func serverGoroutines1(url string) (int64, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var v struct {
		Goroutines *int64 `json:"goroutines"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil || v.Goroutines == nil {
		return 0, false
	}
	return *v.Goroutines, true
}
