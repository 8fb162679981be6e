package oxianhv

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// pids returns the pids of the single pool's workers, sorted.
func (s *server) pids() []int {
	s.t.Helper()
	var pids []int
	for _, w := range s.workers() {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

func TestReloadKeepsWorkers(t *testing.T) {
	s := startCaddy(t, pool("workers 2", "proxy {\n timeout 20s\n}"))
	s.waitReady(2)
	before := s.pids()

	// reload twice with a change that needs no new process, under load
	l := s.startLoadRetrying("/whoami", 4, true)
	eventually(t, 10*time.Second, "load running", func() bool { return l.count() > 20 })
	s.load(pool("workers 2", "proxy {\n timeout 25s\n}"))
	s.load(pool("workers 2", "proxy {\n timeout 25s\n}", "strategy least_busy"))
	n := l.count()
	eventually(t, 10*time.Second, "load served after reload", func() bool { return l.count() > n+20 })
	l.finish(t)

	if after := s.pids(); !slices.Equal(before, after) {
		t.Fatalf("reload replaced workers: pids %v, then %v", before, after)
	}
}

func TestReloadScalesInPlace(t *testing.T) {
	s := startCaddy(t, pool("workers 2"))
	s.waitReady(2)
	before := s.pids()

	s.load(pool("workers 3"))
	s.waitReady(3)
	after := s.pids()
	for _, pid := range before {
		if !slices.Contains(after, pid) {
			t.Fatalf("growing the pool replaced worker %d: %v, then %v", pid, before, after)
		}
	}

	s.load(pool("workers 1"))
	eventually(t, 20*time.Second, "pool shrinks to 1", func() bool { return len(s.workers()) == 1 })
	if pid := s.pids()[0]; !slices.Contains(before, pid) {
		t.Fatalf("shrinking kept worker %d, which is not one of the first ones %v", pid, before)
	}
}

func TestReloadReplacesChangedWorkersByRolling(t *testing.T) {
	s := startCaddy(t, pool("workers 3", "env GENERATION one"))
	s.waitReady(3)
	before := s.pids()

	l := s.startLoadRetrying("/whoami", 4, true)
	eventually(t, 10*time.Second, "load running", func() bool { return l.count() > 20 })
	s.load(pool("workers 3", "env GENERATION two"))
	eventually(t, 30*time.Second, "every worker replaced", func() bool {
		ws := s.workers()
		if len(ws) != 3 {
			return false
		}
		for _, w := range ws {
			if w.State != "ready" || slices.Contains(before, w.PID) {
				return false
			}
		}
		return true
	})
	l.finish(t)

	// the old processes are gone
	eventually(t, 20*time.Second, "old workers exit", func() bool {
		for _, pid := range before {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	})
}

func TestProjectLeavingConfigStops(t *testing.T) {
	s := startCaddy(t, pool("project a", "workers 1"))
	s.waitReady(1)
	old := s.pids()

	s.load(pool("project b", "workers 1"))
	s.waitReady(1)
	eventually(t, 20*time.Second, "project a's worker exits", func() bool {
		return syscall.Kill(old[0], 0) != nil
	})
	report, _ := s.health()
	if report.Projects[0].Project != "b" {
		t.Fatalf("serving %+v", report)
	}
}

func TestStreamsSurviveReload(t *testing.T) {
	s := startCaddy(t, pool("workers 1"))
	s.waitReady(1)

	conn, err := websocket.Dial(strings.Replace(s.base, "http://", "ws://", 1)+"/ws", "", s.base)
	if err != nil {
		t.Fatalf("dialing websocket: %v", err)
	}
	defer conn.Close()
	echo := func(msg string) {
		t.Helper()
		if err := websocket.Message.Send(conn, msg); err != nil {
			t.Fatalf("sending %q: %v", msg, err)
		}
		var reply string
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := websocket.Message.Receive(conn, &reply); err != nil {
			t.Fatalf("receiving echo of %q: %v", msg, err)
		}
		if reply != "echo:"+msg {
			t.Fatalf("echo %q, want %q", reply, "echo:"+msg)
		}
	}
	echo("before")

	// an SSE stream is open across the reload as well
	stream, err := s.client.Get(s.base + "/sse?events=0&interval_ms=50")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	events := bufio.NewReader(stream.Body)
	if _, err := events.ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	s.load(pool("workers 1", "proxy {\n timeout 10s\n}"))
	echo("after")

	// the stream goes on after the reload
	for range 6 {
		line, err := events.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE stream cut by the reload: %v", err)
		}
		_ = line
	}
}

func TestCrashLoopingPoolFailsAloneAndAnswers503(t *testing.T) {
	port := freePort(t)
	s := &server{
		t:      t,
		port:   port,
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 20 * time.Second},
	}
	s.load(fmt.Sprintf(`	handle /broken/* {
		oxian_hv {
			project broken
			command %s
			env TESTWORKER_HEALTH_STATUS 500
			env TESTWORKER_EXIT_AFTER 20ms
			workers 1
			proxy {
				timeout 500ms
			}
		}
	}
	handle {
		oxian_hv {
			project good
			command %s
			workers 1
		}
	}`, testworkerBin, testworkerBin))
	t.Cleanup(func() { stopCaddy(t) })

	// the broken worker backs off, then is marked failed
	eventually(t, 20*time.Second, "broken worker marked failed", func() bool {
		var failed bool
		pools.Range(func(_, v any) bool {
			st := v.(*poolEntry).Status()
			if st.Project == "broken" && len(st.Workers) == 1 {
				failed = st.Workers[0].State == "failed" && st.Workers[0].Restarts >= 5
			}
			return true
		})
		return failed
	})

	// its requests get a clear 503; the other pool is not affected
	resp, body := s.get("/broken/x")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, "no worker of project broken is ready") {
		t.Fatalf("broken pool answered %d (Retry-After %q): %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	for range 5 {
		if resp, body := s.get("/fine"); resp.StatusCode != http.StatusOK {
			t.Fatalf("good pool answered %d: %s", resp.StatusCode, body)
		}
	}
}

func TestChaosKillsUnderLoadLoseNoRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test runs 20 seconds")
	}
	s := startCaddy(t, pool("workers 4", "health {\n interval 200ms\n}"))
	s.waitReady(4)

	l := s.startLoad("/whoami", 8)
	eventually(t, 10*time.Second, "load running", func() bool { return l.count() > 50 })

	// kill a ready worker with SIGKILL every second for 20 seconds
	var backTimes []time.Duration
	for range 20 {
		time.Sleep(time.Second) // the pace of the chaos, not a wait for a condition
		var ready []int
		for _, w := range s.workers() {
			if w.State == "ready" && w.PID > 0 {
				ready = append(ready, w.Index)
			}
		}
		if len(ready) == 0 {
			t.Fatal("no ready worker left to kill")
		}
		index := ready[rand.IntN(len(ready))]
		victim := s.workers()[index].PID
		killed := time.Now()
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "killed worker back in rotation", func() bool {
			w := s.workers()[index]
			return w.State == "ready" && w.PID != victim
		})
		backTimes = append(backTimes, time.Since(killed))
	}
	l.finish(t)

	slices.Sort(backTimes)
	t.Logf("killed workers back in rotation after: median %s, max %s",
		backTimes[len(backTimes)/2], backTimes[len(backTimes)-1])
	if worst := backTimes[len(backTimes)-1]; worst > 1500*time.Millisecond {
		t.Errorf("a killed worker took %s to come back; want about a second at most", worst)
	}
}
