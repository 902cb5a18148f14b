// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

// Growing a single node into a cluster.
//
// nats-server cannot turn a standalone JetStream store into a clustered one: a server started
// with routes finds the store's streams unknown to the cluster's meta layer and deletes them as
// orphans about 30 s later (nats-server 2.15; nats-io/nats-server#5467). So Petrel imports them:
//
//  1. A node started with cluster settings on a data directory whose store was written by a
//     single node moves that store aside to <data>/single-node (one rename), opens it with a
//     second, standalone embedded server, and starts its clustered server on a fresh store.
//  2. In the cluster's meta bucket it claims the import (key grow = its name) before it
//     announces itself (member.<name>). A node with a fresh data directory joining a deployment
//     that has no inbox_shards yet (a new one) waits until every node of the cluster announced
//     itself and no node claimed an import, or until the importer is done: nobody serves an
//     empty directory while the accounts are still on their way.
//  3. The importer copies every stream of the single-node store into the cluster's streams (R3
//     by default), in order, in atomic batches where the stream allows them; each copied
//     message carries the source sequence (GrowSeqHeader), so an interrupted import resumes
//     exactly where the last committed batch ended.
//  4. It records grow = done:<name>, then inbox_shards (the deployment exists: every node
//     serves), and renames <data>/single-node to <data>/single-node.imported (a backup, never
//     read again).
//
// Refused, with an error that says what to do: a single-node store on a node that joins a
// cluster which already holds a deployment (two deployments cannot be merged), two single-node
// stores in one cluster, and a cluster node's store started without cluster settings (it would
// serve, and ack, a stale copy apart from the cluster).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

const (
	// SingleNodeDir holds, under the data directory, a single-node store being imported into
	// the cluster.
	SingleNodeDir = "single-node"
	// ImportedDir is SingleNodeDir once the import is done: a backup, never read again.
	ImportedDir = "single-node.imported"
	// GrowSeqHeader carries, on a message copied from a single-node store, its sequence there.
	GrowSeqHeader = "Petrel-Grow-Seq"

	metaInboxShards = "inbox_shards"
	metaGrow        = "grow"    // importer's name while it imports, "done:" + name after
	metaMember      = "member." // member.<node> = "single" | "fresh": this node joined
	growBatch       = 256       // messages per atomic batch of the import

	errCodeBatchDuplicate = 10201 // JSAtomicPublishContainsDuplicateMessageErr
)

// errRefused is a start that cannot work: never retried.
var errRefused = errors.New("refusing to start")

// errForming: a new deployment waits for its nodes or for an import (retried).
var errForming = errors.New("deployment forming")

// storeKind reports what a JetStream store directory (the StoreDir given to nats-server) holds:
// streams of the global account, and the meta group of a cluster.
func storeKind(storeDir string) (streams, clustered bool, err error) {
	root := filepath.Join(storeDir, server.JetStreamStoreDir)
	ents, err := os.ReadDir(filepath.Join(root, "$G", "streams"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, false, err
	}
	streams = len(ents) > 0
	if _, err := os.Stat(filepath.Join(root, "$SYS", "_js_", "_meta_")); err == nil {
		clustered = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, false, err
	}
	return streams, clustered, nil
}

// prepareStore checks the embedded store against the cluster settings before the server starts
// on it, and with cluster settings (or external NATS) moves a single-node store aside and opens
// it for import.
func (b *Bus) prepareStore(storeDir string) error {
	single := filepath.Join(b.cfg.DataDir, SingleNodeDir)
	streams, clustered, err := storeKind(storeDir)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", storeDir, err)
	}
	_, serr := os.Stat(single)
	pending := serr == nil
	if b.cfg.ClusterListen == "" && len(b.cfg.URLs) == 0 {
		if clustered {
			return fmt.Errorf("%w: %s holds a cluster node's store, but this node was started without cluster settings: "+
				"it would serve, and acknowledge, a stale copy apart from the cluster. Start it with its cluster_listen and peers; "+
				"to leave the cluster for good, move %s away and start empty", errRefused, storeDir, storeDir)
		}
		if pending {
			return fmt.Errorf("%w: %s holds this node's single-node store, whose import into a cluster has not finished. "+
				"Start the node again with its cluster settings to finish it; to go back to a single node instead, "+
				"delete %s and rename %s to %s (the cluster serves only once the import ended, so unless it did, nothing is lost)",
				errRefused, single, storeDir, single, storeDir)
		}
		return nil
	}
	moved := false
	if streams && !clustered {
		if pending {
			return fmt.Errorf("%w: both %s and %s hold a single-node store: keep one (move the other out of %s)", errRefused, storeDir, single, b.cfg.DataDir)
		}
		if err := os.Rename(storeDir, single); err != nil {
			return fmt.Errorf("move the single-node store aside for import: %w", err)
		}
		if err := syncDir(b.cfg.DataDir); err != nil {
			return err
		}
		b.cfg.Logger.Info("grow: this data directory holds a single-node store; moved it aside to import it into the cluster", "from", storeDir, "to", single)
		moved, pending = true, true
	}
	if !pending {
		return nil
	}
	if err := b.openSingle(single); err != nil {
		b.closeSingle()
		if moved { // put it back: the node can still start as a single node
			if rerr := os.Rename(single, storeDir); rerr != nil {
				return fmt.Errorf("%w (and moving %s back to %s failed: %v)", err, single, storeDir, rerr)
			}
		}
		return err
	}
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", storeDir, err)
	}
	return nil
}

// openSingle starts a standalone embedded server on the single-node store and checks it can be
// imported with this node's settings.
func (b *Bus) openSingle(dir string) error {
	srv, err := server.NewServer(&server.Options{
		ServerName:         b.cfg.Name + "-single",
		DontListen:         true,
		JetStream:          true,
		StoreDir:           dir,
		SyncAlways:         true,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 256 << 20,
	})
	if err != nil {
		return fmt.Errorf("open the single-node store %s: %w", dir, err)
	}
	b.single = srv
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		return fmt.Errorf("the single-node store %s did not open within 30s", dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Name(b.cfg.Name+"-import"))
	if err != nil {
		return fmt.Errorf("connect to the single-node store: %w", err)
	}
	b.singleNC = nc
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	b.singleJS = js
	ctx, cancel := context.WithTimeout(context.Background(), objectTimeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, MetaBucket)
	if err != nil {
		return fmt.Errorf("%w: %s has no %s bucket (%v): it is not a Petrel store", errRefused, dir, MetaBucket, err)
	}
	e, err := kv.Get(ctx, metaInboxShards)
	if err != nil {
		return fmt.Errorf("%w: read inbox_shards of the single-node store %s: %v", errRefused, dir, err)
	}
	switch got := string(e.Value()); {
	case got == strconv.Itoa(b.cfg.InboxShards):
		return nil
	case b.shardsAuto:
		return b.adoptShards(got, "the single-node store's")
	default:
		return fmt.Errorf("%w: the single-node store was created with inbox_shards %s but this node is configured with %d: set inbox_shards = %s on every node of the cluster (or leave it unset)",
			errRefused, got, b.cfg.InboxShards, got)
	}
}

func (b *Bus) closeSingle() {
	if b.singleNC != nil {
		b.singleNC.Close()
		b.singleNC = nil
	}
	if b.single != nil {
		b.single.Shutdown()
		b.single.WaitForShutdown()
		b.single = nil
	}
	b.singleJS = nil
}

// growState is this node's part in the forming of a deployment, decided by gate.
type growState int

const (
	growNone   growState = iota // nothing to import
	growImport                  // import the single-node store, then initialise the deployment
	growFinish                  // the import is done; initialise the deployment and tidy up
)

// gate runs before the deployment's facts are written, on nodes with cluster settings. A node
// with a single-node store claims the import; a fresh node of a new deployment waits (errForming)
// until every node has joined and none imports, or until the import is done.
func (b *Bus) gate(ctx context.Context, meta jetstream.KeyValue) (growState, error) {
	me := memberKey(b.cfg.Name)
	initialized, err := b.metaHas(ctx, metaInboxShards)
	if err != nil {
		return growNone, err
	}
	if b.single == nil {
		if initialized {
			return growNone, nil
		}
		if _, err := meta.Put(ctx, me, []byte("fresh")); err != nil {
			return growNone, fmt.Errorf("announce this node: %w", err)
		}
		// Members first, then the claim: an importer claims before it announces itself, so a
		// count that includes it is followed by a read that sees its claim.
		n, err := b.members(ctx)
		if err != nil {
			return growNone, err
		}
		want := 0 // external NATS: edge nodes come and go, none waits for the others
		if b.cfg.ClusterListen != "" {
			want = ClusterSize(b.cfg.ClusterListen, b.cfg.ClusterPeers)
		}
		claim, ok, err := b.metaValue(ctx, metaGrow)
		if err != nil {
			return growNone, err
		}
		if ok {
			return growNone, fmt.Errorf("%w: waiting for node %s to import its single-node store", errForming, strings.TrimPrefix(claim, "done:"))
		}
		if n < want {
			return growNone, fmt.Errorf("%w: a new cluster starts once every node is up: %d of %d have joined", errForming, n, want)
		}
		return growNone, nil
	}
	for {
		claim, ok, err := b.metaValue(ctx, metaGrow)
		if err != nil {
			return growNone, err
		}
		switch {
		case ok && claim == "done:"+b.cfg.Name:
			return growFinish, nil
		case ok && claim == b.cfg.Name:
		case ok:
			return growNone, fmt.Errorf("%w: node %s is growing its own single-node store into this cluster; this node holds another one (%s), and two deployments cannot be merged. "+
				"To keep this node's deployment, start it as a single node again (without cluster settings, after deleting %s and moving %s back to it); to join empty, move %s away",
				errRefused, strings.TrimPrefix(claim, "done:"), b.singleDir(), b.storeDir(), b.singleDir(), b.singleDir())
		case initialized:
			return growNone, fmt.Errorf("%w: this node's single-node store (%s) cannot join a cluster that already holds a deployment: two deployments cannot be merged. "+
				"To keep this node's deployment, start it as a single node again (without cluster settings, after deleting %s and moving %s back to it); to join empty, move %s away",
				errRefused, b.singleDir(), b.storeDir(), b.singleDir(), b.singleDir())
		default:
			if _, err := meta.Create(ctx, metaGrow, []byte(b.cfg.Name)); errors.Is(err, jetstream.ErrKeyExists) {
				continue // somebody else claimed first: look again
			} else if err != nil {
				return growNone, fmt.Errorf("claim the import: %w", err)
			}
			b.cfg.Logger.Info("grow: claimed the import of this node's single-node store")
		}
		if _, err := meta.Put(ctx, me, []byte("single")); err != nil {
			return growNone, fmt.Errorf("announce this node: %w", err)
		}
		return growImport, nil
	}
}

func (b *Bus) singleDir() string { return filepath.Join(b.cfg.DataDir, SingleNodeDir) }

func (b *Bus) storeDir() string { return filepath.Join(b.cfg.DataDir, "jetstream") }

// memberKey is a node's key in the meta bucket; characters a key cannot hold become '_'.
func memberKey(name string) string {
	return metaMember + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
}

// metaValue reads a key of the meta bucket from the stream's leader (a direct get may be answered
// by a replica that has not seen the latest write yet).
func (b *Bus) metaValue(ctx context.Context, key string) (string, bool, error) {
	// Short: a stream without a leader yet does not answer at all, and the caller retries.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	v, _, ok, err := b.KVLatest(ctx, MetaBucket, key)
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", key, err)
	}
	return string(v), ok, nil
}

const kvOperation = "KV-Operation"

func (b *Bus) metaHas(ctx context.Context, key string) (bool, error) {
	_, ok, err := b.metaValue(ctx, key)
	return ok, err
}

// members counts the nodes that announced themselves in the meta bucket (the stream leader's
// subject counts).
func (b *Bus) members(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	s, err := b.js.Stream(ctx, "KV_"+MetaBucket)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("$KV."+MetaBucket+"."+metaMember+">"))
	if err != nil {
		return 0, err
	}
	return len(info.State.Subjects), nil
}

// importSingle copies every stream of the single-node store into the cluster, resuming where an
// earlier attempt ended. The meta bucket is not copied: the deployment's facts are written after.
func (b *Bus) importSingle(ctx context.Context) error {
	start := time.Now()
	var names []string
	lister := b.singleJS.StreamNames(ctx)
	for n := range lister.Name() {
		if n != "KV_"+MetaBucket {
			names = append(names, n)
		}
	}
	if err := lister.Err(); err != nil {
		return fmt.Errorf("list the single-node store's streams: %w", err)
	}
	var total int
	for _, name := range names {
		n, err := b.importStream(ctx, name)
		if err != nil {
			return fmt.Errorf("import stream %s: %w", name, err)
		}
		total += n
	}
	b.cfg.Logger.Info("grow: imported the single-node store", "streams", len(names), "messages", total, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// importStream copies one stream, in order, from the message after the last one already copied.
func (b *Bus) importStream(ctx context.Context, name string) (int, error) {
	sctx, cancel := context.WithTimeout(ctx, objectTimeout)
	src, err := b.singleJS.Stream(sctx, name)
	cancel()
	if err != nil {
		return 0, err
	}
	srcInfo := src.CachedInfo()
	if srcInfo.State.Msgs == 0 {
		return 0, nil
	}
	dst, err := b.importTarget(ctx, srcInfo.Config)
	if err != nil {
		return 0, err
	}
	next, err := b.resumeAt(ctx, dst)
	if err != nil {
		return 0, err
	}
	if next > srcInfo.State.LastSeq {
		return 0, nil
	}
	if next > 1 {
		b.cfg.Logger.Info("grow: resuming the import of a stream", "stream", name, "from_seq", next)
	}
	cons, err := src.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   next,
	})
	if err != nil {
		return 0, err
	}
	atomic := dst.CachedInfo().Config.AllowAtomicPublish
	copied, lastLog := 0, time.Now()
	// Nothing writes to the single-node store, so whatever is left is there: a fetch takes what is
	// at hand without waiting, and pending (from the last message's metadata) says when all is.
	pending := srcInfo.State.Msgs
	for pending > 0 {
		batch, err := cons.FetchNoWait(growBatch)
		if err != nil {
			return copied, err
		}
		var msgs []*nats.Msg
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return copied, err
			}
			pending, next = md.NumPending, md.Sequence.Stream+1
			msgs = append(msgs, copyMsg(m, md.Sequence.Stream))
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return copied, err
		}
		if len(msgs) == 0 { // the rest expired meanwhile, or the consumer lags: ask the stream
			ictx, cancel := context.WithTimeout(ctx, objectTimeout)
			info, err := src.Info(ictx)
			cancel()
			if err != nil {
				return copied, err
			}
			if info.State.Msgs == 0 || info.State.LastSeq < next {
				break
			}
			continue
		}
		if err := b.publishCopies(ctx, msgs, atomic); err != nil {
			return copied, err
		}
		copied += len(msgs)
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			b.cfg.Logger.Info("grow: importing", "stream", name, "copied", copied, "left", pending)
		}
	}
	b.cfg.Logger.Info("grow: imported a stream", "stream", name, "messages", copied)
	return copied, nil
}

// importTarget is the cluster's stream for a source stream: the one migrations created, or, for a
// stream Petrel does not define (none today), one created with the source's config and this
// deployment's replicas.
func (b *Bus) importTarget(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	s, err := b.js.Stream(ctx, cfg.Name)
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return s, err
	}
	cfg.Replicas = b.cfg.Replicas
	return b.js.CreateStream(ctx, cfg)
}

// resumeAt is the source sequence to copy next: one past the GrowSeqHeader of the target's last
// message (1 when it is empty). Until the import ends nothing else writes to the target.
func (b *Bus) resumeAt(ctx context.Context, dst jetstream.Stream) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	name := dst.CachedInfo().Config.Name
	req, _ := json.Marshal(map[string]string{"last_by_subj": ">"})
	msg, err := b.nc.RequestWithContext(ctx, MsgGetSubject(name), req)
	if err != nil {
		return 0, err
	}
	var resp struct {
		Message *struct {
			Header []byte `json:"hdrs"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, err
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return 1, nil
		}
		return 0, resp.Error
	}
	var v string
	if resp.Message != nil && len(resp.Message.Header) > 0 {
		if h, err := nats.DecodeHeadersMsg(resp.Message.Header); err == nil {
			v = h.Get(GrowSeqHeader)
		}
	}
	seq, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: stream %s in the cluster holds messages that were not imported (the last has no %s header): the cluster is not new. To run as a single node again, delete %s and move %s back to it",
			errRefused, name, GrowSeqHeader, b.storeDir(), b.singleDir())
	}
	return seq + 1, nil
}

// copyMsg is the cluster's copy of a stored message: subject, data and the headers that describe
// it (message id, KV operation, rollup), without publish-time conditions or batch controls, plus
// the source sequence.
func copyMsg(m jetstream.Msg, seq uint64) *nats.Msg {
	out := nats.NewMsg(m.Subject())
	out.Data = m.Data()
	for k, vs := range m.Headers() {
		if strings.HasPrefix(k, "Nats-Expected-") || strings.HasPrefix(k, "Nats-Batch-") || k == GrowSeqHeader {
			continue
		}
		for _, v := range vs {
			out.Header.Add(k, v)
		}
	}
	out.Header.Set(GrowSeqHeader, strconv.FormatUint(seq, 10))
	return out
}

// publishCopies stores msgs in order, all or (atomic) none of a batch; without atomic publish one
// by one, each acked before the next, so the target's last message always marks a prefix.
//
// An atomic batch fails as a whole on a message id the stream has seen (in the batch or within its
// duplicate window). The source can hold one id twice (a resend after its window), so such a
// batch is stored one by one instead, where JetStream drops the duplicate and acks the rest: the
// receiver would have dropped it anyway.
func (b *Bus) publishCopies(ctx context.Context, msgs []*nats.Msg, atomic bool) error {
	if atomic {
		pctx, cancel := context.WithTimeout(ctx, objectTimeout)
		_, err := jetstreamext.PublishMsgBatch(pctx, b.js, msgs)
		cancel()
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeBatchDuplicate {
			return err
		}
		for _, m := range msgs { // PublishMsgBatch set its batch headers on them
			for k := range m.Header {
				if strings.HasPrefix(k, "Nats-Batch-") {
					m.Header.Del(k)
				}
			}
		}
	}
	for _, m := range msgs {
		pctx, cancel := context.WithTimeout(ctx, objectTimeout)
		_, err := b.js.PublishMsg(pctx, m)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// finishGrow records the import as done, then the deployment's facts (from here every node
// serves), and retires the single-node store to its backup name.
func (b *Bus) finishGrow(ctx context.Context, meta jetstream.KeyValue) error {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	if _, err := meta.Put(ctx, metaGrow, []byte("done:"+b.cfg.Name)); err != nil {
		return fmt.Errorf("record the import as done: %w", err)
	}
	if err := b.checkShards(ctx, meta); err != nil {
		return err
	}
	b.closeSingle()
	dst := filepath.Join(b.cfg.DataDir, ImportedDir)
	if _, err := os.Stat(dst); err == nil {
		dst += "." + time.Now().UTC().Format("20060102T150405Z")
	}
	if err := os.Rename(b.singleDir(), dst); err != nil {
		return fmt.Errorf("retire the imported single-node store: %w", err)
	}
	if err := syncDir(b.cfg.DataDir); err != nil {
		return err
	}
	b.cfg.Logger.Info("grow: the single-node store is imported; the cluster serves. Its old copy is kept as a backup and never read again: delete it once you are satisfied", "backup", dst)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// growRetry runs this node's part of a grow decided by migrate: the import (resumed after a
// retryable error, as migrations are), then the deployment's facts.
func (b *Bus) growRetry(ctx context.Context) error {
	if b.grow == growNone {
		return nil
	}
	delay := 100 * time.Millisecond
	for b.grow == growImport {
		err := b.importSingle(ctx)
		if err == nil {
			break
		}
		if !retryable(err) || ctx.Err() != nil {
			return err
		}
		b.cfg.Logger.Warn("grow: import interrupted; resuming", "err", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		delay = min(delay*2, 2*time.Second)
	}
	return b.finishGrow(ctx, b.meta)
}
