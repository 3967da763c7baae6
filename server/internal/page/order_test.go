package page

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOrder checks Order against a plain sorted slice under random adds
// and removes: After yields the live items above a serial, in order, and
// sweeping keeps the slice sorted and gives memory back.
func TestOrder(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	var o Order[int]
	var live []uint64 // the model: live serials, ascending
	var next uint64
	for step := range 20000 {
		if len(live) == 0 || rng.IntN(3) > 0 && step < 15000 {
			next++
			o.Add(next, int(next))
			live = append(live, next)
		} else {
			i := rng.IntN(len(live))
			o.Remove(live[i])
			o.Remove(live[i]) // twice changes nothing
			live = slices.Delete(live, i, i+1)
		}
		if step%500 != 0 {
			continue
		}
		after := uint64(0)
		if len(live) > 0 {
			after = live[rng.IntN(len(live))] - uint64(rng.IntN(2))
		}
		var got []uint64
		for s, v := range o.After(after) {
			if uint64(v) != s {
				t.Fatalf("item of serial %d holds %d", s, v)
			}
			got = append(got, s)
		}
		i, _ := slices.BinarySearch(live, after+1)
		if want := live[i:]; !slices.Equal(got, want) {
			t.Fatalf("step %d: after(%d) = %v, want %v", step, after, got, want)
		}
	}
	// Everything removed: the holes are swept and the array shrinks.
	for _, s := range live {
		o.Remove(s)
	}
	if n := len(o.items); n > 1 {
		t.Errorf("%d items left after removing all", n)
	}
	if c := cap(o.items); c > minSweptCap {
		t.Errorf("capacity %d kept after removing 15000 items, want at most %d", c, minSweptCap)
	}
	for range o.After(math.MaxUint64) {
		t.Fatal("after(max) yielded an item")
	}
}

// TestOrderEarlyStop: a caller that stops early sees no more items.
func TestOrderEarlyStop(t *testing.T) {
	var o Order[string]
	for i, v := range []string{"a", "b", "c"} {
		o.Add(uint64(i+1), v)
	}
	var got []string
	for _, v := range o.After(0) {
		got = append(got, v)
		if v == "b" {
			break
		}
	}
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("got %v", got)
	}
}
