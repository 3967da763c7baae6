package page

import (
	"cmp"
	"iter"
	"slices"
)

// Order keeps what a list pages over in creation order, by a serial its
// owner gives each item as it becomes visible, so that a page starts after
// a serial (a Token's After) by binary search and looks at nothing before
// it. Ids cannot give the order: they are random.
//
// A removal leaves a hole, swept once holes are half of the slice, so that
// adding and removing take amortized constant time and a list of 15,000
// connections costs a pointer's walk, not a copy of each. The zero value
// is empty and usable. An Order is not safe for concurrent use: its owner
// holds the lock of what it lists (listener.Registry.mu,
// registry.Registry.mu).
type Order[T any] struct {
	items []orderItem[T] // ascending serial
	holes int            // items removed but not yet swept
}

type orderItem[T any] struct {
	serial uint64
	v      T
	live   bool
}

// minSweptCap is the capacity below which a sweep keeps the slice's
// backing array rather than shrinking it.
const minSweptCap = 64

// Add appends v; serial must be above every serial added before.
func (o *Order[T]) Add(serial uint64, v T) {
	o.items = append(o.items, orderItem[T]{serial: serial, v: v, live: true})
}

// Remove forgets the item of serial, if it is there.
func (o *Order[T]) Remove(serial uint64) {
	i, ok := slices.BinarySearchFunc(o.items, serial, func(it orderItem[T], s uint64) int { return cmp.Compare(it.serial, s) })
	if !ok || !o.items[i].live {
		return
	}
	o.items[i] = orderItem[T]{serial: serial} // keeps the slice sorted, drops v
	o.holes++
	if o.holes*2 < len(o.items) {
		return
	}
	o.items = slices.DeleteFunc(o.items, func(it orderItem[T]) bool { return !it.live })
	o.holes = 0
	// A list that shrank from many items gives their memory back.
	if c := cap(o.items); c > minSweptCap && c > 4*len(o.items) {
		o.items = slices.Clip(slices.Clone(o.items))
	}
}

// After yields the items created after serial, in creation order.
func (o *Order[T]) After(serial uint64) iter.Seq2[uint64, T] {
	return func(yield func(uint64, T) bool) {
		// The first item above serial: equal ones sort before the target.
		i, _ := slices.BinarySearchFunc(o.items, serial, func(it orderItem[T], s uint64) int {
			if it.serial <= s {
				return -1
			}
			return 1
		})
		for _, it := range o.items[i:] {
			if it.live && !yield(it.serial, it.v) {
				return
			}
		}
	}
}
