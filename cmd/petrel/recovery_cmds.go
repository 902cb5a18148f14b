// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/petrelchat/petrel/client"
)

// Account recovery: register prints the recovery key once, recovery-key show prints it again
// while the home lives, and recover re-claims the account on a new home with it.

const recoverUsage = "recover --server URL[,URL...] --name NAME --recovery-key KEY"

const recoveryKeyUsage = "recovery-key show"

// printRecoveryKey shows a new account's recovery key, once, on standard output.
func printRecoveryKey(e *env, key string) {
	if key == "" {
		return
	}
	fmt.Fprintf(e.stdout, "recovery key: %s\n"+
		"  Write it down and keep it somewhere safe: if this device is lost, 'petrel recover\n"+
		"  --server URL --name NAME --recovery-key KEY' on a new device re-claims the account\n"+
		"  (this device is then removed). 'petrel recovery-key show' prints it again while this\n"+
		"  home exists. Anyone with it can take over the account.\n", key)
}

func runRecover(ctx context.Context, e *env, args []string) int {
	const cmd = "recover"
	fs := newFlags(e, cmd, recoverUsage+"\n\n"+
		"Re-claims account NAME on this new home with its recovery key (the one 'petrel register'\n"+
		"printed): this device becomes the account's primary and only device. The account's old\n"+
		"devices are removed (a running one stops with \"this device was removed from its\n"+
		"account\"), and your contacts see a changed safety number. Messages stored for the old\n"+
		"devices are dropped; contacts' later messages come here. The recovery key stays valid.")
	server := fs.String("server", "", "server base URL (http://HOST:PORT or https://HOST), or several separated by commas")
	name := fs.String("name", "", "the account name to re-claim")
	key := fs.String("recovery-key", "", "the account's recovery key (48 characters; case, spaces and dashes do not matter)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	if *server == "" || *name == "" || *key == "" {
		return usageErr(e, cmd, "--server, --name and --recovery-key are required")
	}
	urls, code := checkServerURLs(e, cmd, *server) // errors_cli.go
	if code != 0 {
		return code
	}
	n, code := normalizeName(e, cmd, *name)
	if code != 0 {
		return code
	}
	st, err := openStore(e, true)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	acct, err := client.Recover(ctx, st, client.RecoverOptions{ServerURL: urls[0], ServerURLs: urls[1:], Name: n, RecoveryKey: *key})
	if err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "recovered %s on %s\ndevice id:   %s\nfingerprint: %s\n"+
		"The account's other devices were removed; your contacts see a new safety number.\n",
		acct.Name, sanitize(strings.Join(acct.Servers, ", ")), acct.DeviceID, acct.Fingerprint)
	return 0
}

func runRecoveryKey(_ context.Context, e *env, args []string) int {
	const cmd = "recovery-key"
	fs := newFlags(e, cmd, recoveryKeyUsage+"\n\n"+
		"Prints the account's recovery key, kept in this home by the primary device that registered\n"+
		"(or recovered) the account. Keep it secret: anyone with it can take over the account.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 || fs.Arg(0) != "show" {
		return usageErr(e, cmd, "want 'recovery-key show'")
	}
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	key, err := client.RecoveryKey(st)
	if err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "recovery key: %s\n", key)
	return 0
}

// describeRecoveryErr turns recovery errors into messages with the next step ("" when err is
// none of them).
func describeRecoveryErr(err error) string {
	switch {
	case errors.Is(err, client.ErrWrongRecoveryKey):
		return "the recovery key does not match this account (check it, and the account name); " +
			"after 5 wrong tries the server makes you wait"
	case errors.Is(err, client.ErrInvalidRecoveryKey):
		return err.Error() + " (a recovery key is 48 characters: 0-9 and A-Z, in groups of 4)"
	case errors.Is(err, client.ErrNoRecoveryKey):
		return err.Error()
	}
	return ""
}
