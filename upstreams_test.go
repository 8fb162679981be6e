package oxianhv

import (
	"testing"
	"time"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

func TestWarmShare(t *testing.T) {
	now := time.Now()
	for age, want := range map[time.Duration]float64{
		0:                      0,
		500 * time.Millisecond: 0.25,
		time.Second:            0.5,
		2 * time.Second:        1,
		time.Minute:            1,
	} {
		if got := workerpool.WarmShare(now.Add(-age), now, 2*time.Second); got != want {
			t.Errorf("ready %s ago: share %v, want %v", age, got, want)
		}
	}
	if got := workerpool.WarmShare(time.Time{}, now, 2*time.Second); got != 1 {
		t.Errorf("never ready: share %v, want 1", got)
	}
	if got := workerpool.WarmShare(now, now, 0); got != 1 {
		t.Errorf("no warm-up: share %v, want 1", got)
	}
}

func TestWarmAddrs(t *testing.T) {
	addrs := []string{"warm", "half", "cold"}
	shares := []float64{1, 0.5, 0}
	share := func(i int) float64 { return shares[i] }

	// a draw below a worker's share keeps it
	if got := warmAddrs(addrs, share, func() float64 { return 0.4 }); len(got) != 2 ||
		got[0] != "warm" || got[1] != "half" {
		t.Errorf("draw 0.4: %v", got)
	}
	if got := warmAddrs(addrs, share, func() float64 { return 0.6 }); len(got) != 1 || got[0] != "warm" {
		t.Errorf("draw 0.6: %v", got)
	}

	// over many draws a half-warm worker gets about half its share
	n := 0
	for i := range 1000 {
		draw := float64(i) / 1000
		for _, a := range warmAddrs(addrs, share, func() float64 { return draw }) {
			if a == "half" {
				n++
			}
		}
	}
	if n != 500 {
		t.Errorf("half-warm worker kept %d times of 1000", n)
	}

	// all cold: none is left out, or there would be no worker at all
	if got := warmAddrs(addrs[1:], func(int) float64 { return 0 }, func() float64 { return 0.5 }); len(got) != 2 {
		t.Errorf("all cold: %v", got)
	}
}
