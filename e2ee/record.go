package e2ee

import (
	"errors"
	"sync"
)

// SessionRecord implements Sesame-style session handling for one remote
// device: one active session (used to send) plus up to
// MaxArchivedSessions inactive ones kept so messages still in flight on
// them decrypt. A message that decrypts on an inactive session makes it the
// active one (so two devices that initiated at the same time converge on
// one session). Multi-device users are handled by the caller keeping one
// SessionRecord per (user, device) and encrypting once per device.
//
// SessionRecord is safe for concurrent use. Lock order: SessionRecord.mu,
// then Session.mu.
type SessionRecord struct {
	mu       sync.Mutex // guards sessions
	sessions []*Session // sessions[0] is active; at most 1+MaxArchivedSessions
}

// NewSessionRecord returns an empty record.
func NewSessionRecord() *SessionRecord { return &SessionRecord{} }

// Active returns the active session, or nil if the record is empty.
func (r *SessionRecord) Active() *Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sessions) == 0 {
		return nil
	}
	return r.sessions[0]
}

// Len returns the number of sessions held (active and archived).
func (r *SessionRecord) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// Promote makes s the active session (adding it if it is new), archives the
// previous active one, and drops the oldest archived sessions beyond
// MaxArchivedSessions. Call it with the session from InitiateSession or
// AcceptSession.
func (r *SessionRecord) Promote(s *Session) {
	if s == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.promoteLocked(s)
}

func (r *SessionRecord) promoteLocked(s *Session) {
	out := make([]*Session, 0, len(r.sessions)+1)
	out = append(out, s)
	for _, o := range r.sessions {
		if o != s {
			out = append(out, o)
		}
	}
	if len(out) > 1+MaxArchivedSessions {
		out = out[:1+MaxArchivedSessions]
	}
	r.sessions = out
}

// Encrypt encrypts with the active session; ErrNoSession if there is none.
func (r *SessionRecord) Encrypt(plaintext []byte) ([]byte, error) {
	s := r.Active()
	if s == nil {
		return nil, ErrNoSession
	}
	return s.Encrypt(plaintext)
}

// Decrypt tries the active session, then the archived ones, newest first.
// The first that decrypts becomes the active session. It is transactional
// like Session.Decrypt. A PreKey message whose base key matches no held
// session fails with ErrNoSession: the caller then runs AcceptSession and
// Promotes the new session. Otherwise the most specific error wins:
// ErrDuplicateMessage, then ErrTooManySkipped, then ErrInvalidMessage.
func (r *SessionRecord) Decrypt(ciphertext []byte) ([]byte, error) {
	m, err := parseMessage(ciphertext)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.preKey != nil {
		for _, s := range r.sessions {
			if s.matchesPreKey(m) {
				pt, err := s.Decrypt(ciphertext)
				if err == nil {
					r.promoteLocked(s)
				}
				return pt, err
			}
		}
		return nil, ErrNoSession
	}
	best := error(ErrInvalidMessage)
	if len(r.sessions) == 0 {
		best = ErrNoSession
	}
	for _, s := range r.sessions {
		pt, err := s.Decrypt(ciphertext)
		if err == nil {
			r.promoteLocked(s)
			return pt, nil
		}
		switch {
		case errors.Is(err, ErrDuplicateMessage):
			best = err
		case errors.Is(err, ErrTooManySkipped) && !errors.Is(best, ErrDuplicateMessage):
			best = err
		}
	}
	return nil, best
}

// Record layout (version 1, tag 0x21): session count (1, at most
// 1+MaxArchivedSessions), then per session a 4-byte length and the
// session's own serialisation (active first).

// MarshalBinary serialises every session, secrets included.
func (r *SessionRecord) MarshalBinary() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := writer{}
	w.byte1(stateVersion)
	w.byte1(tagSessionRecord)
	w.byte1(byte(len(r.sessions)))
	for _, s := range r.sessions {
		b, err := s.MarshalBinary()
		if err != nil {
			return nil, err
		}
		w.vbytes(b)
	}
	return w.b, nil
}

// maxSessionStateSize bounds one serialized session.
const maxSessionStateSize = 2 + 1 + 2*IdentityKeySize + 32*4 + 8 + preKeyHeaderSize + 1 + (1+MaxOldReceivingChains)*68 + 4 + MaxSkippedTotal*68

// UnmarshalSessionRecord decodes the output of SessionRecord.MarshalBinary.
func UnmarshalSessionRecord(b []byte) (*SessionRecord, error) {
	rd, err := stateReader(b, tagSessionRecord)
	if err != nil {
		return nil, err
	}
	n := int(rd.byte1())
	if rd.bad || n > 1+MaxArchivedSessions {
		return nil, ErrInvalidState
	}
	rec := &SessionRecord{}
	for range n {
		sb := rd.vbytes(maxSessionStateSize)
		if rd.bad {
			return nil, ErrInvalidState
		}
		s, err := UnmarshalSession(sb)
		if err != nil {
			return nil, err
		}
		rec.sessions = append(rec.sessions, s)
	}
	if !rd.done() {
		return nil, ErrInvalidState
	}
	return rec, nil
}
