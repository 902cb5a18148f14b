package e2ee

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// Safety numbers follow Signal's numeric fingerprint, extended to cover
// every device of a user:
//
//	keys  = the 64-byte key material (Ed25519 || X25519 public keys) of
//	        each device identity, sorted bytewise, duplicates removed
//	h     = SHA-512(0x00 0x01 || len(keys) as 4 bytes || keys... || id)
//	repeat 5200 times: h = SHA-512(h || keys...)
//	digits = for each of the first six 5-byte chunks c of h:
//	         uint40(c) mod 100000 as 5 decimal digits
//
// Each side yields 30 digits; the safety number is the two strings
// concatenated, the numerically smaller first, so both parties compute the
// same 60 digits.
const (
	safetyNumberVersion    = 1
	safetyNumberIterations = 5200
)

// SafetyNumber returns the 60-digit safety number (digits only; see
// FormatSafetyNumber for display in 12 groups of 5) for two users. ids are
// stable user identifiers (e.g. account names); keys are all of each user's
// devices' identity keys, in any order (nil entries are ignored). Swapping
// local and remote gives the same string.
func SafetyNumber(localID string, local []*IdentityKey, remoteID string, remote []*IdentityKey) string {
	a := safetyFingerprint(localID, local)
	b := safetyFingerprint(remoteID, remote)
	if a > b {
		a, b = b, a
	}
	return a + b
}

func safetyFingerprint(id string, keys []*IdentityKey) string {
	var mats [][]byte
	for _, k := range keys {
		if k != nil {
			mats = append(mats, k.material())
		}
	}
	slices.SortFunc(mats, bytes.Compare)
	mats = slices.CompactFunc(mats, bytes.Equal)
	all := bytes.Join(mats, nil)

	h := sha512.New()
	var hdr [6]byte
	binary.BigEndian.PutUint16(hdr[:2], safetyNumberVersion)
	binary.BigEndian.PutUint32(hdr[2:], uint32(len(mats)))
	h.Write(hdr[:])
	h.Write(all)
	h.Write([]byte(id))
	sum := h.Sum(nil)
	for range safetyNumberIterations {
		h.Reset()
		h.Write(sum)
		h.Write(all)
		sum = h.Sum(sum[:0])
	}
	var sb strings.Builder
	for i := range 6 {
		c := sum[i*5 : i*5+5]
		v := uint64(c[0])<<32 | uint64(c[1])<<24 | uint64(c[2])<<16 | uint64(c[3])<<8 | uint64(c[4])
		fmt.Fprintf(&sb, "%05d", v%100000)
	}
	return sb.String()
}

// FormatSafetyNumber groups a 60-digit safety number as 12 groups of 5
// digits separated by spaces, as Signal displays it.
func FormatSafetyNumber(sn string) string {
	var sb strings.Builder
	for i := 0; i < len(sn); i += 5 {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(sn[i:min(i+5, len(sn))])
	}
	return sb.String()
}
