// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// RegisterOptions describes a new account.
type RegisterOptions struct {
	// ServerURL is the server's base URL: http://HOST:PORT or https://HOST[:PORT].
	ServerURL string
	// ServerURLs are more base URLs of the same service (its other nodes). Registration goes to
	// the first of ServerURL, ServerURLs... that answers; all are stored, and the client uses
	// them all. ServerURL may be empty when ServerURLs is not.
	ServerURLs []string
	// Name is the account name (1-32 of [a-z0-9_.-], starting with a letter or digit).
	Name string
	// Invite is the invite code, for servers whose registration is invite-only.
	Invite string
	// PreKeys is how many one-time prekeys of each kind to upload. Default: 100.
	PreKeys int
	// Timeout bounds the exchange with the server. Default: 30s.
	Timeout time.Duration
	// Rand is the randomness source. Default: crypto/rand.
	Rand io.Reader
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// onboardDefaults fills the options Register, Link and Recover share: 100 one-time prekeys of
// each kind, a 30 s exchange, crypto/rand, time.Now.
func onboardDefaults(preKeys *int, timeout *time.Duration, rnd *io.Reader, now *func() time.Time) {
	if *preKeys <= 0 {
		*preKeys = 100
	}
	if *timeout <= 0 {
		*timeout = 30 * time.Second
	}
	if *rnd == nil {
		*rnd = rand.Reader
	}
	if *now == nil {
		*now = time.Now
	}
}

// serverURLs is the list of server URLs an onboarding (Register, Link, Recover) stores: first
// and then more, normalised, without repeats, each a valid connect URL; at least one, at most
// maxServers.
func serverURLs(first string, more []string) ([]string, error) {
	var urls []string
	for _, u := range append([]string{first}, more...) {
		if u = normURL(u); u == "" || slices.Contains(urls, u) {
			continue
		}
		if _, err := connectURL(u); err != nil {
			return nil, err
		}
		urls = append(urls, u)
	}
	if len(urls) == 0 {
		return nil, errors.New("client: no server URL")
	}
	if len(urls) > maxServers {
		return nil, fmt.Errorf("client: %d server URLs, at most %d", len(urls), maxServers)
	}
	return urls, nil
}

// Register creates this device's keys (Provision), stores them in st, and registers a new
// account with this device as its first device. It refuses (ErrAlreadyRegistered) if st already holds a registered
// device. Server refusals are *Error values matching ErrNameTaken, ErrInvalidName,
// ErrInvalidInvite, ErrRegistrationClosed, ...
func Register(ctx context.Context, st *store.Store, opts RegisterOptions) (Account, error) {
	onboardDefaults(&opts.PreKeys, &opts.Timeout, &opts.Rand, &opts.Now)
	if !petrelv1.ValidName(opts.Name) {
		return Account{}, fmt.Errorf("%w: %q (want 1-32 of a-z 0-9 _ . -, starting with a letter or digit)", ErrInvalidName, opts.Name)
	}
	urls, err := serverURLs(opts.ServerURL, opts.ServerURLs)
	if err != nil {
		return Account{}, err
	}
	now := opts.Now()

	// Keys first, stored before the server hears of them: a registration whose answer is lost
	// must not lose the keys of the account it created.
	keys, err := Provision(st, ProvisionOptions{PreKeys: opts.PreKeys, Rand: opts.Rand, Now: opts.Now})
	if err != nil {
		return Account{}, err
	}
	// The recovery key, like the keys, is stored before the server hears of its verifier.
	rk, err := e2ee.NewRecoveryKey(opts.Rand)
	if err != nil {
		return Account{}, err
	}
	if err := storeOnboarding(st, urls, opts.Name, rk); err != nil {
		return Account{}, err
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cn, ch, err := challengeAny(ctx, urls, opts.Timeout)
	if err != nil {
		return Account{}, err
	}
	defer cn.shutdown(true)
	reg := &petrelv1.Register{
		Name:      opts.Name,
		Invite:    opts.Invite,
		AuthKey:   keys.AuthKey,
		Signature: keys.SignChallenge(ch.GetNonce()),
		Keys:      keys.Upload,

		RecoveryVerifier: rk.Verifier(),
	}
	w, err := cn.handshake(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_Register{Register: reg}})
	if err != nil {
		return Account{}, err
	}
	if err := checkWelcome(w, keys.DeviceID, opts.Name); err != nil {
		return Account{}, err
	}
	if err := storeWelcome(st, w, urls, now); err != nil {
		return Account{}, fmt.Errorf("the account was created but storing it failed: %w", err)
	}
	return Account{Name: opts.Name, DeviceID: keys.DeviceID, ServerURL: urls[0], Servers: urls,
		Fingerprint: keys.Fingerprint, Primary: true, RecoveryKey: rk.Text()}, nil
}

// challengeAny connects to the first of urls that answers with a Challenge, trying them in turn:
// an account may be created through any node. Only failures before anything was sent move on
// (unreachable, refused, UNAVAILABLE); the errors of every URL are returned if none answers.
func challengeAny(ctx context.Context, urls []string, timeout time.Duration) (*conn, *petrelv1.Challenge, error) {
	var errs []error
	for _, u := range urls {
		cn, ch, err := challenge(ctx, u, timeout)
		if err == nil {
			return cn, ch, nil
		}
		if ctx.Err() != nil {
			return nil, nil, err
		}
		if len(urls) == 1 {
			return nil, nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return nil, nil, errors.Join(errs...)
}

// challenge connects to url and reads the server's Challenge.
func challenge(ctx context.Context, url string, timeout time.Duration) (*conn, *petrelv1.Challenge, error) {
	ws, err := dialServer(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	cn := newConn(ws, timeout)
	f, err := cn.read(ctx)
	if err != nil {
		cn.shutdown(true)
		return nil, nil, err
	}
	if e := f.GetError(); e != nil {
		cn.shutdown(true)
		return nil, nil, errorFromProto(e)
	}
	ch := f.GetChallenge()
	if ch == nil || len(ch.GetNonce()) != petrelv1.NonceSize {
		cn.shutdown(true)
		return nil, nil, fmt.Errorf("%w: expected Challenge", ErrProtocol)
	}
	return cn, ch, nil
}

// checkWelcome checks that the server's answer to an onboarding device is a Welcome for it
// (deviceID) and for account name.
func checkWelcome(w *petrelv1.Welcome, deviceID, name string) error {
	if w == nil || w.GetDeviceId() != deviceID || w.GetName() != name {
		return fmt.Errorf("%w: expected Welcome for this device", ErrProtocol)
	}
	return nil
}

// storeWelcome records in st that the device is registered (Welcome w): when, the server's frame
// limit, and the nodes the server named besides urls.
func storeWelcome(st *store.Store, w *petrelv1.Welcome, urls []string, now time.Time) error {
	return st.Update(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		a.Registered = true
		a.RegisteredAt = now
		a.MaxFrameBytes = w.GetMaxFrameBytes()
		learned := newServerList(urls, nil)
		learned.learn(w.GetNodes())
		a.LearnedServers = learned.learnedURLs()
		return tx.PutAccount(a)
	})
}

// storeOnboarding records in st, before the server hears of the device, the account an
// onboarding device is for: its name, the server URLs and the recovery key.
func storeOnboarding(st *store.Store, urls []string, name string, rk e2ee.RecoveryKey) error {
	return st.Update(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		a.ServerURL, a.Servers, a.Name = urls[0], urls[1:], name
		a.RecoveryKey = rk.Text()
		return tx.PutAccount(a)
	})
}
