// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"testing"
	"unsafe"

	dto "github.com/prometheus/client_model/go"
)

// SetDirectNotFoundForTest makes the direct gets of the device records f names answer "not
// found" until the test ends, as a replica that cannot serve them does.
func SetDirectNotFoundForTest(t testing.TB, f func(key string) bool) {
	directNotFoundHook.Store(&f)
	t.Cleanup(func() { directNotFoundHook.Store(nil) })
}

// SetPreKeyTotalsSubjectForTest makes Status ask subject for the prekey totals instead of the
// PREKEYS stream's stream-info API ("" restores it), and forgets a failure's backoff.
func (d *Directory) SetPreKeyTotalsSubjectForTest(t testing.TB, subject string) {
	if subject == "" {
		totalsSubjectHook.Store(nil)
	} else {
		totalsSubjectHook.Store(&subject)
		t.Cleanup(func() { totalsSubjectHook.Store(nil) })
	}
	d.totalsDownUntil.Store(0)
}

// PreKeyCountsDirectForTest is petrel_directory_prekey_counts_direct_total.
func (d *Directory) PreKeyCountsDirectForTest() float64 {
	var m dto.Metric
	if err := d.metrics.countsDirect.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// AuthCachedForTest reports whether the auth cache holds device id.
func (d *Directory) AuthCachedForTest(id string) bool {
	k, ok := parseDeviceKey(id)
	if !ok || d.auth == nil {
		return false
	}
	_, _, ok = d.auth.get(k)
	return ok
}

// AccountCachedForTest reports whether the account cache holds name.
func (d *Directory) AccountCachedForTest(name string) bool {
	if d.accounts == nil {
		return false
	}
	_, _, ok := d.accounts.get(name)
	return ok
}

// AuthCacheLenForTest is the number of devices in the auth cache.
func (d *Directory) AuthCacheLenForTest() int {
	if d.auth == nil {
		return 0
	}
	return d.auth.len()
}

// An auth cache entry stays small: 200,000 of them are the default bound.
func TestAuthEntrySize(t *testing.T) {
	if s := unsafe.Sizeof(authEntry{}); s > 64 {
		t.Fatalf("authEntry is %d bytes, want at most 64", s)
	}
	if s := unsafe.Sizeof(deviceKey{}); s != 16 {
		t.Fatalf("deviceKey is %d bytes, want 16", s)
	}
}
