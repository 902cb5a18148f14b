package e2ee

import "encoding/binary"

// Wire and state encodings are hand-written, fixed layouts (see
// docs/protocol.md). Every variable-length field is bounded by a cap checked
// before any allocation.

const (
	// wireVersion is the first byte of every message.
	wireVersion byte = 1
	// stateVersion is the first byte of every serialized state blob.
	stateVersion byte = 1
)

// Message types (second byte of a message).
const (
	typeMessage      byte = 1
	typePreKey       byte = 2
	typeGroupMessage byte = 3
	typeDistribution byte = 4
)

// State tags (second byte of a serialized state).
const (
	tagIdentityKeyPair   byte = 0x10
	tagSignedPreKeyPair  byte = 0x11
	tagOneTimePreKeyPair byte = 0x12
	tagKEMPreKeyPair     byte = 0x13
	tagSession           byte = 0x20
	tagSessionRecord     byte = 0x21
	tagSenderKey         byte = 0x30
	tagSenderKeyReceiver byte = 0x31
)

type writer struct{ b []byte }

func (w *writer) byte1(v byte) { w.b = append(w.b, v) }
func (w *writer) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *writer) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *writer) raw(v []byte) { w.b = append(w.b, v...) }
func (w *writer) bool1(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

// vbytes writes a uint32 length followed by the bytes.
func (w *writer) vbytes(v []byte) { w.u32(uint32(len(v))); w.raw(v) }

// reader is a bounds-checked cursor. After the first failure every read
// returns zero values and ok reports false.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte1() byte {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u32() uint32 {
	v := r.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (r *reader) u64() uint64 {
	v := r.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (r *reader) bool1() bool {
	switch r.byte1() {
	case 0:
		return false
	case 1:
		return true
	default:
		r.bad = true
		return false
	}
}

// fixed copies exactly n bytes into a new slice.
func (r *reader) fixed(n int) []byte {
	v := r.take(n)
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// key32 reads 32 bytes into an array.
func (r *reader) key32() (k [32]byte) {
	copy(k[:], r.take(32))
	return k
}

// vbytes reads a uint32 length (at most max) and that many bytes.
func (r *reader) vbytes(max int) []byte {
	n := r.u32()
	if r.bad || uint64(n) > uint64(max) {
		r.bad = true
		return nil
	}
	return r.fixed(int(n))
}

// rest returns all remaining bytes.
func (r *reader) rest() []byte { return r.take(len(r.b)) }

// done reports whether decoding succeeded and consumed every byte.
func (r *reader) done() bool { return !r.bad && len(r.b) == 0 }
