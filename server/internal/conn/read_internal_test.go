package conn

import (
	"bytes"
	"testing"
	"unsafe"
)

// within reports whether f's bytes lie inside buf.
func within(f, buf []byte) bool {
	if len(f) == 0 {
		return false
	}
	p, start := uintptr(unsafe.Pointer(unsafe.SliceData(f))), uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	return p >= start && p < start+uintptr(len(buf))
}

// TestRetain: frames that cover less than half of their read are copied
// out of it, so a small frame does not keep a 64 KiB read alive; frames
// that cover more share it, and their events carry the rest between them.
func TestRetain(t *testing.T) {
	read := bytes.Repeat([]byte("y"), readBufferSize)
	copy(read, "x\n")
	small := [][]byte{read[:1]}
	if got := retain(small, len(read)); got != 0 {
		t.Errorf("retain of a copied frame = %d, want 0", got)
	}
	if within(small[0], read) || string(small[0]) != "x" || cap(small[0]) != 1 {
		t.Errorf("a 1-byte frame of a %d-byte read still points into it (cap %d)", len(read), cap(small[0]))
	}

	half := [][]byte{read[:readBufferSize/4], read[readBufferSize/4 : readBufferSize*3/4]}
	got := retain(half, len(read))
	if !within(half[0], read) || !within(half[1], read) {
		t.Error("frames covering three quarters of their read were copied")
	}
	if uncovered := readBufferSize / 4; got*len(half) < uncovered || got*len(half) >= uncovered+len(half) {
		t.Errorf("each of %d frames retains %d bytes, want the %d no frame covers between them", len(half), got, uncovered)
	}

	whole := [][]byte{read}
	if got := retain(whole, len(read)); got != 0 || !within(whole[0], read) {
		t.Errorf("a frame that is its whole read: retain %d, copied %v; want 0 and shared", got, !within(whole[0], read))
	}
}

// TestReadSizer: reads through net.Conn.Read start small, double while
// they fill their buffer, wait with minReadSize after a read that did not
// fill it and resume at the size reached, and halve after reads that use
// less than half of it.
func TestReadSizer(t *testing.T) {
	s := newReadSizer(maxTLSReadSize)
	steps := []struct {
		n        int // what the read returns, of s.next()
		wantNext int
	}{
		{100, minReadSize},          // short: the next read may wait, small
		{minReadSize, busyReadSize}, // the small read filled: there is more
		{busyReadSize, 2 * busyReadSize},
		{2 * busyReadSize, maxTLSReadSize},
		{maxTLSReadSize, maxTLSReadSize}, // at the most
		{maxTLSReadSize - 1, minReadSize},
		{minReadSize, maxTLSReadSize}, // resumes at the size reached
		{100, minReadSize},            // a read that used little of it
		{minReadSize, maxTLSReadSize / 2},
	}
	for i, st := range steps {
		size := s.next()
		s.update(size, st.n)
		if got := s.next(); got != st.wantNext {
			t.Fatalf("step %d: a read of %d returned %d; next read %d, want %d", i, size, st.n, got, st.wantNext)
		}
	}

	small := newReadSizer(100) // a raw listener's max_frame_bytes below minReadSize
	for range 3 {
		size := small.next()
		if size != 100 {
			t.Fatalf("read of %d with a 100-byte most", size)
		}
		small.update(size, size)
	}
}

// TestReadClass: each pooled size holds what it is asked for, and the
// largest is readBufferSize.
func TestReadClass(t *testing.T) {
	for _, n := range []int{1, minReadSize, minReadSize + 1, 4096, 4097, maxTLSReadSize, readBufferSize} {
		bp := getReadBuffer(n)
		if len(*bp) < n || len(*bp) > 2*max(n, minReadSize) {
			t.Errorf("buffer for %d bytes has %d", n, len(*bp))
		}
		putReadBuffer(bp)
	}
	if got := minReadSize << (readClasses - 1); got != readBufferSize {
		t.Errorf("largest pooled buffer %d, want readBufferSize %d", got, readBufferSize)
	}
}
