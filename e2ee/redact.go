package e2ee

import (
	"fmt"
	"io"
)

// Private types print a redacted form with every fmt verb (%v, %+v, %#v,
// %s, %x, %q, ...). Types that cannot have value-receiver methods (they hold
// a mutex) keep their secrets behind pointers, which fmt prints as
// addresses only.

const redactedText = "<redacted>"

func formatRedacted(f fmt.State, s string) { io.WriteString(f, s) }

// String returns a redacted description; it never contains key material.
func (k IdentityKeyPair) String() string {
	if k.pub == nil {
		return "e2ee.IdentityKeyPair{" + redactedText + "}"
	}
	return "e2ee.IdentityKeyPair{public: " + k.pub.String() + ", private: " + redactedText + "}"
}

// GoString returns the same redacted description as String.
func (k IdentityKeyPair) GoString() string { return k.String() }

// Format writes the redacted description for every verb.
func (k IdentityKeyPair) Format(f fmt.State, _ rune) { formatRedacted(f, k.String()) }

// String returns a redacted description; it never contains key material.
func (p SignedPreKeyPair) String() string {
	return fmt.Sprintf("e2ee.SignedPreKeyPair{ID: %d, private: %s}", p.ID, redactedText)
}

// GoString returns the same redacted description as String.
func (p SignedPreKeyPair) GoString() string { return p.String() }

// Format writes the redacted description for every verb.
func (p SignedPreKeyPair) Format(f fmt.State, _ rune) { formatRedacted(f, p.String()) }

// String returns a redacted description; it never contains key material.
func (p OneTimePreKeyPair) String() string {
	return fmt.Sprintf("e2ee.OneTimePreKeyPair{ID: %d, private: %s}", p.ID, redactedText)
}

// GoString returns the same redacted description as String.
func (p OneTimePreKeyPair) GoString() string { return p.String() }

// Format writes the redacted description for every verb.
func (p OneTimePreKeyPair) Format(f fmt.State, _ rune) { formatRedacted(f, p.String()) }

// String returns a redacted description; it never contains key material.
func (p KEMPreKeyPair) String() string {
	return fmt.Sprintf("e2ee.KEMPreKeyPair{ID: %d, LastResort: %t, private: %s}", p.ID, p.LastResort, redactedText)
}

// GoString returns the same redacted description as String.
func (p KEMPreKeyPair) GoString() string { return p.String() }

// Format writes the redacted description for every verb.
func (p KEMPreKeyPair) Format(f fmt.State, _ rune) { formatRedacted(f, p.String()) }

// String returns a redacted description; it never contains key material.
func (s *Session) String() string {
	if s == nil {
		return "e2ee.Session(nil)"
	}
	return "e2ee.Session{state: " + redactedText + "}"
}

// GoString returns the same redacted description as String.
func (s *Session) GoString() string { return s.String() }

// Format writes the redacted description for every verb.
func (s *Session) Format(f fmt.State, _ rune) { formatRedacted(f, s.String()) }

// String returns a redacted description; it never contains key material.
func (r *SessionRecord) String() string {
	if r == nil {
		return "e2ee.SessionRecord(nil)"
	}
	return "e2ee.SessionRecord{sessions: " + redactedText + "}"
}

// GoString returns the same redacted description as String.
func (r *SessionRecord) GoString() string { return r.String() }

// Format writes the redacted description for every verb.
func (r *SessionRecord) Format(f fmt.State, _ rune) { formatRedacted(f, r.String()) }

// String returns a redacted description; it never contains key material.
func (k *SenderKey) String() string {
	if k == nil {
		return "e2ee.SenderKey(nil)"
	}
	return fmt.Sprintf("e2ee.SenderKey{KeyID: %d, state: %s}", k.KeyID(), redactedText)
}

// GoString returns the same redacted description as String.
func (k *SenderKey) GoString() string { return k.String() }

// Format writes the redacted description for every verb.
func (k *SenderKey) Format(f fmt.State, _ rune) { formatRedacted(f, k.String()) }

// String returns a redacted description; it never contains key material.
func (r *SenderKeyReceiver) String() string {
	if r == nil {
		return "e2ee.SenderKeyReceiver(nil)"
	}
	return fmt.Sprintf("e2ee.SenderKeyReceiver{KeyID: %d, state: %s}", r.KeyID(), redactedText)
}

// GoString returns the same redacted description as String.
func (r *SenderKeyReceiver) GoString() string { return r.String() }

// Format writes the redacted description for every verb.
func (r *SenderKeyReceiver) Format(f fmt.State, _ rune) { formatRedacted(f, r.String()) }
