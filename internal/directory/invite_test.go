// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/petrelchat/petrel/internal/directory"
)

// A registration refused because the name is taken does not spend its invite.
func TestInviteNotSpentOnNameTaken(t *testing.T) {
	d, _ := startedDir(t, directory.Config{Policy: directory.PolicyInvite})
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{3}, 32)
	first, _ := d.CreateInvite(ctx)
	reg, _ := registration(t, "taken", nonce, 70)
	reg.Invite = first
	if _, err := d.Register(ctx, reg, nonce); err != nil {
		t.Fatal(err)
	}
	code, _ := d.CreateInvite(ctx)
	dup, _ := registration(t, "taken", nonce, 71)
	dup.Invite = code
	if _, err := d.Register(ctx, dup, nonce); !errors.Is(err, directory.ErrNameTaken) {
		t.Fatalf("taken name: %v", err)
	}
	ok, _ := registration(t, "free", nonce, 71)
	ok.Invite = code
	if _, err := d.Register(ctx, ok, nonce); err != nil {
		t.Fatalf("the invite was spent by the refused registration: %v", err)
	}
}

// When two checked registrations race for one name, the loser's invite is given back.
func TestInviteReturnedWhenTheNameRaceIsLost(t *testing.T) {
	d, _ := startedDir(t, directory.Config{Policy: directory.PolicyInvite})
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{4}, 32)
	c1, _ := d.CreateInvite(ctx)
	c2, _ := d.CreateInvite(ctx)
	a, _ := registration(t, "race", nonce, 72)
	a.Invite = c1
	b, _ := registration(t, "race", nonce, 73)
	b.Invite = c2
	ra, err := d.CheckRegister(ctx, a, nonce)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := d.CheckRegister(ctx, b, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.CompleteRegister(ctx, ra); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CompleteRegister(ctx, rb); !errors.Is(err, directory.ErrNameTaken) {
		t.Fatalf("the loser of the race: %v", err)
	}
	again, _ := registration(t, "other", nonce, 73)
	again.Invite = c2
	if _, err := d.Register(ctx, again, nonce); err != nil {
		t.Fatalf("the loser's invite was not given back: %v", err)
	}
}
