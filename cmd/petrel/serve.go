// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/petrelchat/petrel/internal/server"
)

const serveUsage = "serve [--listen ADDR] [--admin-listen ADDR] [--data DIR] [--config FILE] [--tls-cert F --tls-key F | --acme-domain NAME,... [--acme-email ADDR] [--acme-directory URL] [--acme-http-listen ADDR]] [--insecure] [--registration POLICY] [--public-url URL] [--nats URL,...] [--cluster-listen ADDR --peers ADDR,... [--cluster-name NAME] [--cluster-advertise ADDR] [--replicas N] [--cluster-token-file F] [--cluster-tls-cert F --cluster-tls-key F --cluster-tls-ca F]] [--log-level L]"

func runServe(ctx context.Context, e *env, args []string) int {
	cfg, code, ok := serveConfig(e, args)
	if !ok {
		return code
	}
	log := newLogger(e, cfg)
	srv, err := server.New(cfg, log)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel serve: %v\n", err)
		return 1
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		abs, _ := filepath.Abs(cfg.Data)
		adm := srv.AdminURL()
		if adm == "" {
			adm = "off"
		}
		fmt.Fprintf(e.stdout, "petrel %s serving on %s (data: %s, registration: %s, admin: %s)\n", versionString(), srv.URL(), abs, cfg.Registration, adm)
	case err := <-errc:
		fmt.Fprintf(e.stderr, "petrel serve: %v\n", err)
		return 1
	}
	if err := <-errc; err != nil {
		fmt.Fprintf(e.stderr, "petrel serve: shutdown: %v\n", err)
		return 1
	}
	return 0
}

// serveConfig parses serve's flags and config file into a validated configuration. When ok is
// false, the error is written and code is the exit code.
func serveConfig(e *env, args []string) (cfg server.Config, code int, ok bool) {
	fs := newFlags(e, "serve", serveUsage)
	configPath := fs.String("config", "", "TOML config file (flags override it)")
	listen := fs.String("listen", "", "listen address (default 127.0.0.1:7070)")
	adminListen := fs.String("admin-listen", "", "operator listener address for /metrics, /debug/pprof/, /v1/admin/* (default 127.0.0.1:7071, or 127.0.0.1:0 when --listen has port 0; the bound URL is written to DATA/admin.addr; off for none)")
	data := fs.String("data", "", "data directory (default ./petrel-data)")
	tlsCert := fs.String("tls-cert", "", "TLS certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "TLS private key (PEM)")
	insecure := fs.Bool("insecure", false, "allow plain HTTP on a non-loopback address")
	registration := fs.String("registration", "", "registration policy: open, invite or closed")
	natsURLs := fs.String("nats", "", "external NATS URLs, comma-separated (default: embedded)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error")
	publicURL := fs.String("public-url", "", "this node's URL as clients reach it, told to clients so they can fail over to it (default: the bound listen address, e.g. http://127.0.0.1:7070; none when listening on 0.0.0.0 or ::)")
	clusterListen := fs.String("cluster-listen", "", "host:port for cluster routes between the nodes' embedded NATS servers (default: none, the node runs alone; off loopback needs --cluster-token-file and --cluster-tls-*, or --insecure)")
	peers := fs.String("peers", "", "the other nodes' --cluster-listen addresses, comma-separated (this node's own may be listed); needs --cluster-listen")
	clusterName := fs.String("cluster-name", "", "NATS cluster name, the same on every node (default petrel)")
	clusterAdvertise := fs.String("cluster-advertise", "", "host:port the other nodes are told to reach this node's cluster listener at, for routes they learn by gossip (default: --cluster-listen); petrel bench chaos sets a closed port so that every route goes through its fault-injecting proxies")
	replicas := fs.Int("replicas", 0, "replicas of every stream and bucket, 1..5, at most the number of nodes (default 0: 3 with 3 or more nodes or external NATS, else 1)")
	clusterTokenFile := fs.String("cluster-token-file", "", "file holding the cluster routes' secret, the same on every node (openssl rand -hex 32 > cluster.token); a node accepts routes only from nodes with the same secret")
	clusterTLSCert := fs.String("cluster-tls-cert", "", "this node's certificate for cluster routes (PEM), signed by --cluster-tls-ca, for serverAuth and clientAuth")
	clusterTLSKey := fs.String("cluster-tls-key", "", "the key of --cluster-tls-cert (PEM)")
	clusterTLSCA := fs.String("cluster-tls-ca", "", "the CA certificate (PEM) that signed every node's route certificate: routes are mutual TLS 1.3")
	acmeDomain := fs.String("acme-domain", "", "DNS names to get TLS certificates for automatically over ACME, comma-separated (instead of --tls-cert/--tls-key; the CA must reach --listen as NAME:443)")
	acmeEmail := fs.String("acme-email", "", "contact address given to the ACME CA")
	acmeDirectory := fs.String("acme-directory", "", "the ACME CA's directory URL (default: Let's Encrypt)")
	acmeHTTPListen := fs.String("acme-http-listen", "", "address of a plain HTTP listener for the ACME HTTP-01 challenge, e.g. :80 (default: none, TLS-ALPN-01 on --listen only)")
	if code, ok := parseFlags(fs, args); !ok {
		return cfg, code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "petrel serve: unexpected argument %q\n", fs.Arg(0))
		return cfg, 2, false
	}
	if *configPath != "" {
		var err error
		if cfg, err = server.LoadConfig(*configPath); err != nil {
			fmt.Fprintf(e.stderr, "petrel serve: %v\n", err)
			return cfg, 1, false
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["listen"] {
		cfg.Listen = *listen
	}
	if set["admin-listen"] {
		cfg.AdminListen = *adminListen
	}
	if set["data"] {
		cfg.Data = *data
	}
	if set["tls-cert"] {
		cfg.TLSCert = *tlsCert
	}
	if set["tls-key"] {
		cfg.TLSKey = *tlsKey
	}
	if set["insecure"] {
		cfg.Insecure = *insecure
	}
	if set["registration"] {
		cfg.Registration = *registration
	}
	if set["nats"] {
		cfg.NATS = splitList(*natsURLs)
	}
	if set["log-level"] {
		cfg.LogLevel = *logLevel
	}
	if set["public-url"] {
		cfg.PublicURL = *publicURL
	}
	if set["cluster-listen"] {
		cfg.ClusterListen = *clusterListen
	}
	if set["peers"] {
		cfg.Peers = splitList(*peers)
	}
	if set["cluster-name"] {
		cfg.ClusterName = *clusterName
	}
	if set["cluster-advertise"] {
		cfg.ClusterAdvertise = *clusterAdvertise
	}
	if set["replicas"] {
		cfg.Replicas = *replicas
	}
	if set["cluster-token-file"] {
		cfg.ClusterTokenFile = *clusterTokenFile
	}
	if set["cluster-tls-cert"] {
		cfg.ClusterTLSCert = *clusterTLSCert
	}
	if set["cluster-tls-key"] {
		cfg.ClusterTLSKey = *clusterTLSKey
	}
	if set["cluster-tls-ca"] {
		cfg.ClusterTLSCA = *clusterTLSCA
	}
	if set["acme-domain"] {
		cfg.ACMEDomain = splitList(*acmeDomain)
	}
	if set["acme-email"] {
		cfg.ACMEEmail = *acmeEmail
	}
	if set["acme-directory"] {
		cfg.ACMEDirectory = *acmeDirectory
	}
	if set["acme-http-listen"] {
		cfg.ACMEHTTPListen = *acmeHTTPListen
	}
	cfg.Version = versionString()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(e.stderr, "petrel serve: invalid configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return cfg, 1, false
	}
	return cfg, 0, true
}

func newLogger(e *env, cfg server.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
