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
