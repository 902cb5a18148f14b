// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Command petrel is Petrel's one binary: the server (petrel serve), the operator tools (petrel admin),
// and the command-line client (register, link, devices, group, send, recv, chat, whoami, safety-number).
//
// Only this package reads flags and environment variables; everything else takes typed config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// env is what a subcommand may touch of the outside world, so tests can run commands in-process.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// home is the client state directory (--home, PETREL_HOME, default ~/.petrel).
	home string
	// account is the home's account name once a client command opened it.
	account string
	// flagSets, when set (tests), collects every FlagSet newFlags makes, in order: the help test
	// compares what each command defines with README.md.
	flagSets *[]*flag.FlagSet
}

type command struct {
	name    string
	usage   string
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

func commands() []command {
	return []command{
		{"serve", serveUsage, "run a Petrel server", runServe},
		{"admin", adminUsage, "operator tools (invite codes, incidents)", runAdmin},
		{"report", reportUsage, "report a problem with a server (anonymous)", runReport},
		{"register", "register --server URL --name NAME [--invite CODE]", "create an account with this device", runRegister},
		{"send", "send --to NAME TEXT... | send --group GROUP TEXT... (or - for stdin)", "send a message (or each line of stdin)", runSend},
		{"recv", "recv [--wait DURATION] [--json]", "receive pending messages", runRecv},
		{"chat", "chat NAME | chat --group GROUP", "interactive terminal chat", runChat},
		{"group", groupUsage, "create and manage groups", runGroup},
		{"tui", tuiUsage, "full-screen client: conversations, history, marks (also: petrel on a terminal)", runTUI},
		{"history", "history NAME [--limit N] [--json] | history --group GROUP [--limit N] [--json]", "print a conversation's stored history", runHistory},
		{"outbox", "outbox [--json]", "list messages not yet fully sent, and why", runOutbox},
		{"whoami", "whoami", "show this device's account, device id and server", runWhoami},
		{"safety-number", "safety-number NAME", "show the safety number to compare with NAME out of band", runSafetyNumber},
		{"link", "link --server URL [--no-history]", "make this home a new device of an existing account", runLink},
		{"devices", "devices [--json] | devices approve CODE [--name NAME] | devices remove ID", "list, approve and remove this account's devices", runDevices},
		{"settings", settingsUsage, "read receipts and who sees your last seen", runSettings},
		{"disappear", disappearUsage, "set a chat's disappearing-message timer", runDisappear},
		{"recover", recoverUsage, "re-claim an account on a new device with its recovery key", runRecover},
		{"recovery-key", recoveryKeyUsage, "show this account's recovery key", runRecoveryKey},
		{"backup", backupUsage, "export or import this home's state, encrypted with a passphrase", runBackup},
		{"bench", benchUsage, "load generator: idle, relay, offline, churn scenarios", runBench},
		{"probe", probeUsage, "black-box prober: probe accounts send and receive through each node", runProbe},
		{"bench-worker", "", "", runBenchWorker}, // hidden: a worker process of petrel bench
		{"healthcheck", healthcheckUsage, "ask a server's /healthz once (exit 0 healthy, 1 not): a container HEALTHCHECK", runHealthcheck},
		{"version", "version", "print the version", runVersion},
	}
}

// version is set at build time with -ldflags "-X main.version=..."; when it is not, buildVersion
// reads it from the binary's build information (versionString).
var version = ""

func runVersion(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "version", "version\n\nPrints the version (also: petrel --version).")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, "version", "takes no arguments")
	}
	fmt.Fprintf(e.stdout, "petrel %s\n", versionString())
	return 0
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// run parses global flags, picks the subcommand and runs it. It returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	global := flag.NewFlagSet("petrel", flag.ContinueOnError)
	global.SetOutput(e.stderr)
	home := global.String("home", "", "client state directory (env PETREL_HOME, default ~/.petrel)")
	showVersion := global.Bool("version", false, "print the version and exit")
	global.Usage = func() { usage(e.stderr) }
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := global.Args()
	if *showVersion {
		return runVersion(ctx, e, nil)
	}
	if len(rest) == 0 {
		if isTerminal(e.stdin) && isTerminal(e.stdout) {
			e.home = resolveHome(*home, e.getenv)
			return runTUI(ctx, e, nil) // tui.go
		}
		usage(e.stderr)
		return 2
	}
	e.home = resolveHome(*home, e.getenv)
	name := rest[0]
	if name == "help" || name == "-h" || name == "--help" {
		if name == "help" && len(rest) > 1 {
			return helpCommand(ctx, e, rest[1:])
		}
		usage(e.stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, e, rest[1:])
		}
	}
	fmt.Fprintf(e.stderr, "petrel: unknown command %q\n\n", name)
	usage(e.stderr)
	return 2
}

func resolveHome(flagValue string, getenv func(string) string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := getenv("PETREL_HOME"); v != "" {
		return v
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".petrel")
	}
	return ".petrel"
}

func usage(w io.Writer) {
	var b strings.Builder
	b.WriteString("usage: petrel [--home DIR] COMMAND [flags] | petrel help COMMAND | petrel --version\n\ncommands:\n")
	for _, c := range commands() {
		if c.summary == "" {
			continue // hidden
		}
		fmt.Fprintf(&b, "  %-15s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'petrel COMMAND --help' for a command's flags. See README.md for the full reference.\n")
	io.WriteString(w, b.String())
}

// newFlags returns a FlagSet for a subcommand that also accepts --home after the subcommand name.
// Its --help prints the usage line, then every flag written as README.md writes it: --name VALUE.
func newFlags(e *env, name, usageLine string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Func("home", "client state directory `DIR` (overrides the global --home)", func(s string) error {
		e.home = s
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: petrel %s\n\nflags:\n", usageLine)
		writeFlags(fs.Output(), fs, usageLine)
	}
	if e.flagSets != nil {
		*e.flagSets = append(*e.flagSets, fs)
	}
	return fs
}

// writeFlags lists fs's flags as "--name VALUE" and their usage, as flag.PrintDefaults does but with
// the double dash and the placeholders of the usage text (README's style). VALUE is the usage's
// back-quoted name, else the one the usage text gives the flag ("--wait DURATION"), else one for its
// type; a boolean flag has none.
func writeFlags(w io.Writer, fs *flag.FlagSet, usageText string) {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		quoted, usage := flag.UnquoteUsage(f)
		value := flagPlaceholder(f, quoted, usageText)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if value != "" {
			fmt.Fprintf(&b, " %s", value)
		}
		fmt.Fprintf(&b, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if !zeroDefault(f) {
			if fmt.Sprintf("%T", f.Value) == "*flag.stringValue" {
				fmt.Fprintf(&b, " (default %q)", f.DefValue)
			} else {
				fmt.Fprintf(&b, " (default %v)", f.DefValue)
			}
		}
		b.WriteString("\n")
	})
	io.WriteString(w, b.String())
}

// synopsisValue finds "--name VALUE" in a usage text and returns VALUE ("" if the text does not
// write the flag with a value).
func synopsisValue(text, name string) string {
	for rest := text; ; {
		i := strings.Index(rest, "--"+name)
		if i < 0 {
			return ""
		}
		rest = rest[i+2+len(name):]
		if rest == "" || rest[0] != ' ' {
			continue // --name=false, or a longer flag name
		}
		tok, _, _ := strings.Cut(rest[1:], " ")
		tok, _, _ = strings.Cut(tok, "\n")
		for strings.HasSuffix(tok, "]") && strings.Count(tok, "]") > strings.Count(tok, "[") {
			tok = tok[:len(tok)-1]
		}
		if tok == "" || strings.ContainsAny(tok[:1], "-[]|") {
			return ""
		}
		return tok
	}
}

// flagPlaceholder is the VALUE writeFlags prints after --name (see there).
func flagPlaceholder(f *flag.Flag, quoted, usageText string) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return ""
	}
	if strings.Contains(f.Usage, "`") {
		return quoted
	}
	if v := synopsisValue(usageText, f.Name); v != "" {
		return v
	}
	switch quoted {
	case "duration":
		return "DURATION"
	case "int", "uint", "int64", "uint64", "float":
		return "N"
	}
	return "VALUE"
}

// zeroDefault reports whether f's default is its type's zero value (not worth printing).
func zeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "false", "0", "0s", "[]", "<nil>":
		return true
	}
	return false
}

// parseFlags parses args and maps -h to exit code 0 and other errors to 2 (ok=false). A --help
// after the arguments (petrel settings read-receipts --help) is help too, unless a "--" ends the
// flags before it.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if slices.Contains(args, "--") { // the arguments after it are text, even "--help"
		return 0, true
	}
	for _, a := range fs.Args() {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.Usage()
			return 0, false
		}
	}
	return 0, true
}
