// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// MaxBulkDevices is the most devices one bulk registration request may carry (server limit).
const MaxBulkDevices = 1000

// RegisterBulkPath is the operator endpoint for synthetic accounts.
const RegisterBulkPath = "/v1/admin/register-bulk"

// account is one synthetic device: an account's primary device, with the account's other
// (companion) devices if it has any, or one companion. Only the auth keys' seeds travel to
// workers; the E2EE keys are needed only at registration (and by --e2ee clients).
type account struct {
	Name     string `json:"n"`
	DeviceID string `json:"d"`
	Seed     []byte `json:"s"` // Ed25519 seed of the auth key (32 bytes)
	Server   int    `json:"v"` // index of the server it is registered on and connects to
	// Companions are the account's linked devices besides this primary (registered with it,
	// connecting to the same server; their Name is the account's). Empty for one-device accounts.
	Companions []account `json:"c,omitempty"`

	priv ed25519.PrivateKey // derived from Seed on first use by one goroutine
}

func (a *account) key() ed25519.PrivateKey {
	if a.priv == nil {
		a.priv = ed25519.NewKeyFromSeed(a.Seed)
	}
	return a.priv
}

// deviceKeys are the private E2EE keys of one device, kept for --e2ee runs.
type deviceKeys struct {
	identity *e2ee.IdentityKeyPair
	signed   *e2ee.SignedPreKeyPair
	kemLast  *e2ee.KEMPreKeyPair
	oneTime  []*e2ee.OneTimePreKeyPair
	kem      []*e2ee.KEMPreKeyPair // one-time ML-KEM prekeys, ids 2..
}

// newRunPrefix returns a fresh account name prefix, so that runs against one server never collide.
func newRunPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "b" + hex.EncodeToString(b[:])
}

// registrar registers synthetic devices through the operator bulk endpoint of each server.
type registrar struct {
	servers    []string // base URLs
	admins     []string // admin listener base URL per server
	tokens     []string // operator token per server
	client     *http.Client
	registered atomic.Int64 // devices registered so far, for progress lines
}

// generate makes the keys of one device: an Ed25519 auth key, an identity key, a signed prekey,
// a last-resort ML-KEM prekey and oneTime one-time prekeys of each kind.
func generate(name string, oneTime int) (account, *pb.BulkDevice, *deviceKeys, error) {
	var seed [ed25519.SeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return account{}, nil, nil, err
	}
	a := account{Name: name, Seed: seed[:]}
	pub := a.key().Public().(ed25519.PublicKey)
	a.DeviceID = pb.DeviceID(pub)
	k := &deviceKeys{}
	var err error
	if k.identity, err = e2ee.GenerateIdentityKeyPair(nil); err != nil {
		return a, nil, nil, err
	}
	if k.signed, err = e2ee.GenerateSignedPreKey(nil, 1, k.identity); err != nil {
		return a, nil, nil, err
	}
	if k.kemLast, err = e2ee.GenerateKEMPreKey(nil, 1, k.identity, true); err != nil {
		return a, nil, nil, err
	}
	sp, lp := k.signed.Public(), k.kemLast.Public()
	up := &pb.KeyBundleUpload{
		IdentityKey:         k.identity.PublicKey().Bytes(),
		SignedPrekey:        &pb.SignedPreKey{Id: sp.ID, PublicKey: sp.PublicKey, Signature: sp.Signature},
		LastResortKemPrekey: &pb.KEMPreKey{Id: lp.ID, PublicKey: lp.PublicKey, Signature: lp.Signature, LastResort: true},
	}
	if oneTime > 0 {
		if k.oneTime, err = e2ee.GenerateOneTimePreKeys(nil, 1, oneTime); err != nil {
			return a, nil, nil, err
		}
		for _, o := range k.oneTime {
			p := o.Public()
			up.OneTimePrekeys = append(up.OneTimePrekeys, &pb.OneTimePreKey{Id: p.ID, PublicKey: p.PublicKey})
		}
		for i := range oneTime {
			kp, err := e2ee.GenerateKEMPreKey(nil, uint32(2+i), k.identity, false)
			if err != nil {
				return a, nil, nil, err
			}
			k.kem = append(k.kem, kp)
			p := kp.Public()
			up.KemPrekeys = append(up.KemPrekeys, &pb.KEMPreKey{Id: p.ID, PublicKey: p.PublicKey, Signature: p.Signature})
		}
	}
	return a, &pb.BulkDevice{Name: name, AuthKey: pub, Keys: up}, k, nil
}

// register generates and registers n accounts named prefix-0 … prefix-(n-1), each a primary
// device with companions linked devices; account i belongs to server i % len(servers) (its
// devices' connections go there too). Keys are generated on every core, and each batch is posted
// as soon as it is ready, so generation and the server's work overlap. With keep, the private
// E2EE keys of the primaries are returned too.
func (r *registrar) register(ctx context.Context, prefix string, n, companions, oneTime int, keep bool) ([]account, []*deviceKeys, error) {
	accts := make([]account, n)
	var keys []*deviceKeys
	if keep {
		keys = make([]*deviceKeys, n)
	}
	workers := runtime.GOMAXPROCS(0) + 2
	ns := len(r.servers)
	// Batches: runs of devices of one server.
	type batch struct{ server, first, count int } // devices first, first+ns, … (count of them)
	// The server's limit counts companions as devices.
	perAccount := 1 + companions
	size := min(MaxBulkDevices/perAccount, max(50, (n+workers-1)/workers))
	// A request body stays well under the server's limit (64 MiB by default): with one-time
	// prekeys a device takes ~1.4 KB per ML-KEM prekey.
	size = min(size, max(1, bulkBodyBudget/(perAccount*deviceBytes(oneTime))))
	var batches []batch
	for sv := range ns {
		total := (n - sv + ns - 1) / ns
		for done := 0; done < total; done += size {
			batches = append(batches, batch{server: sv, first: sv + done*ns, count: min(size, total-done)})
		}
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	for range min(workers, len(batches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b := int(next.Add(1) - 1)
				if b >= len(batches) {
					return
				}
				bt := batches[b]
				req := &pb.BulkRegisterRequest{Devices: make([]*pb.BulkDevice, 0, bt.count)}
				mine := make([]account, 0, bt.count)
				for k := range bt.count {
					i := bt.first + k*ns
					a, dev, dk, err := generate(prefix+"-"+strconv.Itoa(i), oneTime)
					if err != nil {
						fail(fmt.Errorf("generate keys: %w", err))
						return
					}
					a.Server = bt.server
					for range companions {
						c, cdev, _, err := generate(a.Name, oneTime)
						if err != nil {
							fail(fmt.Errorf("generate keys: %w", err))
							return
						}
						c.Server = bt.server
						a.Companions = append(a.Companions, c)
						dev.Companions = append(dev.Companions, cdev)
					}
					accts[i] = a
					if keep {
						keys[i] = dk
					}
					mine = append(mine, a)
					req.Devices = append(req.Devices, dev)
				}
				if err := r.post(ctx, bt.server, req, mine); err != nil {
					fail(err)
					return
				}
				r.registered.Add(int64(len(mine) * perAccount))
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return accts, keys, nil
}

// bulkBodyBudget is the most bytes of keys put in one bulk registration request.
const bulkBodyBudget = 24 << 20

// deviceBytes estimates the encoded size of one device in a bulk registration with oneTime
// one-time prekeys of each kind: an ML-KEM-768 prekey is 1,184 bytes and a 64-byte signature, an
// X25519 one 32 bytes, and the identity, signed and last-resort keys about 1.5 KB.
func deviceBytes(oneTime int) int { return 1600 + oneTime*(1184+64+32+24) }

// sameCompanions reports whether a bulk registration's answer lists exactly the companions of
// its entry i.
func sameCompanions(res *pb.BulkRegisterResponse, i int, cs []account) bool {
	if i >= len(res.GetCompanionIds()) {
		return false
	}
	ids := res.GetCompanionIds()[i].GetDeviceIds()
	if len(ids) != len(cs) {
		return false
	}
	for j, id := range ids {
		if id != cs[j].DeviceID {
			return false
		}
	}
	return true
}

// ErrOperatorToken reports a bulk registration the server refused for want of the operator token.
var ErrOperatorToken = errors.New("the server refused the operator token")

// post sends one bulk registration and checks every device in the answer.
func (r *registrar) post(ctx context.Context, server int, req *pb.BulkRegisterRequest, accts []account) error {
	body, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	adm := strings.TrimRight(r.admins[server], "/")
	if !IsLoopback(adm) {
		return fmt.Errorf("admin listener %s: %w", adm, ErrNotLoopback) // never send the token off this machine
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, adm+RegisterBulkPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Authorization", "Bearer "+r.tokens[server])
	hr.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := r.client.Do(hr)
	if err != nil {
		return fmt.Errorf("bulk registration: cannot reach the admin listener at %s (of server %s): %w; is the server running? (its admin address is in <data>/admin.addr)", adm, r.servers[server], err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("bulk registration: read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w at %s (%s): pass the server's <data>/admin.token with --admin-token-file or PETREL_ADMIN_TOKEN", ErrOperatorToken, adm, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("bulk registration at %s: %s: %s", adm, resp.Status, strings.TrimSpace(string(out[:min(len(out), 300)])))
	}
	res := &pb.BulkRegisterResponse{}
	if err := proto.Unmarshal(out, res); err != nil {
		return fmt.Errorf("bulk registration: answer is not a BulkRegisterResponse: %w", err)
	}
	if len(res.GetDeviceIds()) != len(accts) {
		return fmt.Errorf("bulk registration: %d device ids for %d devices", len(res.GetDeviceIds()), len(accts))
	}
	var failed int
	var first string
	for i, id := range res.GetDeviceIds() {
		e := ""
		if i < len(res.GetErrors()) {
			e = res.GetErrors()[i]
		}
		if id == accts[i].DeviceID && e == "" && len(accts[i].Companions) > 0 && !sameCompanions(res, i, accts[i].Companions) {
			e = "its companions were not registered (does the server support linked devices?)"
		}
		if id != accts[i].DeviceID || (e != "" && len(accts[i].Companions) > 0) {
			failed++
			if first == "" {
				first = fmt.Sprintf("%s: %s", accts[i].Name, e)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("bulk registration: %d of %d devices refused (first: %s)", failed, len(accts), first)
	}
	return nil
}
