// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// petrel tui: the full-screen client (Bubble Tea). The conversation list on the left (1:1 and
// groups, unread counts, last message, most recent first), the open conversation on the right
// (its stored history with day separators, local times, sender names and the marks of your own
// messages), a status line in words and the composer at the bottom. Rendering is in
// tui_view.go, the composer in tui_composer.go.

const tuiUsage = "tui [--bell=false] [--notify]"

const (
	// tuiScan bounds the history records read at start (newest first).
	tuiScan = 20_000
	// tuiKeep bounds the messages kept in memory per conversation.
	tuiKeep = 1_000
	// tuiMarkRefresh bounds the own messages whose marks are re-read from the store per tick.
	tuiMarkRefresh = 200
	// tuiPresenceMax bounds the accounts whose presence the tui subscribes to.
	tuiPresenceMax = 100
	// noticeShown is how long a notice stays in the status line.
	noticeShown = 20 * time.Second
	// tuiTick is how often marks, the queue count and typing indicators are refreshed.
	tuiTick = time.Second
)

// tuiItem is one line of a conversation: a message, or a note (membership or timer change).
type tuiItem struct {
	seq    uint64
	id     string
	from   string // the sender account
	group  string // the group id of a group message
	own    bool   // sent from this device: it has a mark
	synced bool   // sent by this account from another device
	note   bool   // a membership or timer change (text is the whole line)
	text   string
	at     time.Time
	status store.Status
	fail   string
	unseen bool // received, not marked seen yet
}

// tuiConv is a conversation: with an account (key: its name) or a group (key: store.GroupKey).
type tuiConv struct {
	key      string
	group    string // the group id, for a group
	title    string
	items    []*tuiItem
	unread   int
	last     time.Time
	preview  string
	typing   map[string]time.Time // who is typing → until when it shows
	presence string               // "online", "last seen 14:05", ""
	online   bool
}

type connState int

const (
	connConnecting connState = iota
	connOnline
	connOffline
	connStopped
)

// tuiModel is the Bubble Tea model. Everything in it is touched on the program's goroutine only;
// client events arrive as messages (tuiEventMsg).
type tuiModel struct {
	ctx    context.Context
	c      *client.Client
	st     *store.Store
	me     string
	bell   bool
	notify bool

	width, height int
	convs         map[string]*tuiConv
	order         []string // conversation keys, most recent first
	open          string   // the open conversation's key ("" none)
	scroll        int      // lines scrolled up from the bottom of the open conversation
	input         composer
	search        string // /search filter of the open conversation ("": none)
	help          bool

	conn          connState
	everConnected bool
	reconnected   time.Time
	retryIn       time.Duration
	queued        int
	stopErr       string
	retryAt       time.Time
	notice        string    // a one-line message in the status line
	noticeAt      time.Time // when it was set: it fades after noticeShown
	lastNotice    string

	typing *typingNotifier
	target *typingTarget
	quit   bool

	// drawn holds the unseen items of the open conversation in the window of the last view, and
	// since when they have been there (tui_drawn.go); out is the terminal (nil in tests), now
	// the clock (nil: time.Now).
	drawn map[*tuiItem]time.Time
	out   *drawOutput
	now   func() time.Time
}

// typingTarget is the conversation typing indicators go to (read by the notifier's goroutine).
type typingTarget struct {
	mu    sync.Mutex
	key   string
	group string
}

func (t *typingTarget) set(key, group string) {
	t.mu.Lock()
	t.key, t.group = key, group
	t.mu.Unlock()
}

func (t *typingTarget) get() (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.key, t.group
}

// Messages of the program besides keys and window sizes.
type (
	tuiEventMsg   struct{ ev client.Event }
	tuiTickMsg    struct{}
	tuiNoticeMsg  string
	tuiRunEnded   struct{ err error }
	tuiRefreshMsg struct{}
	// tuiGroupCreated says /group create made group id.
	tuiGroupCreated struct{ id, notice string }
)

func runTUI(ctx context.Context, e *env, args []string) int {
	const cmd = "tui"
	fs := newFlags(e, cmd, tuiUsage+"\n\n"+
		"The full-screen client (also what 'petrel' with no command opens on a terminal): your\n"+
		"conversations on the left, the open one on the right, a composer at the bottom. Keys:\n"+
		"Tab/Shift-Tab, Ctrl-N/Ctrl-P, Up/Down switch conversations; PgUp/PgDn scroll; Enter\n"+
		"sends; Esc clears a search or help; Ctrl-C quits. Commands: /help, /new NAME,\n"+
		"/group create NAME USER..., /group add USER..., /group remove USER..., /group leave,\n"+
		"/search TEXT, /quit; '//' at the start sends a literal '/'. Nothing else starting with\n"+
		"'/' is ever sent.")
	bell := fs.Bool("bell", true, "ring the terminal bell on a new message in another conversation")
	notify := fs.Bool("notify", false, "also ask the terminal for a desktop notification (OSC 9 and OSC 777; names the sender, never the text)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	if !isTerminal(e.stdin) || !isTerminal(e.stdout) {
		return usageErr(e, cmd, "the tui needs a terminal; in scripts use petrel send, recv, chat or history")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	events := make(chan client.Event, 64)
	cfg := clientTuning
	cfg.Store, cfg.Events = st, events
	c, err := client.Open(cfg) // not FailFast: an unreachable server is "offline", retried
	if err != nil {
		return fail(e, cmd, err)
	}
	e.account = c.Account().Name
	m := newTUIModel(ctx, c, st, *bell, *notify)
	if err := m.load(); err != nil {
		c.Close()
		return fail(e, cmd, err)
	}
	var out io.Writer = e.stdout
	if f, ok := e.stdout.(*os.File); ok {
		m.out = &drawOutput{File: f}
		out = m.out
	}
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(e.stdin), tea.WithOutput(out))
	m.typing = newTypingNotifier(ctx, func(ctx context.Context, on bool) {
		key, group := m.target.get()
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		defer tcancel()
		if group != "" {
			_ = c.SendGroupTyping(tctx, group, on) // best effort: never stored, never retried
		} else if key != "" {
			_ = c.SendTyping(tctx, key, on)
		}
	})

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ev := range events {
			p.Send(tuiEventMsg{ev})
		}
	}()
	go func() {
		defer wg.Done()
		err := c.Run(ctx)
		p.Send(tuiRunEnded{err})
	}()
	_, perr := p.Run()
	cancel()
	c.Close() // Run has returned: nothing emits any more
	close(events)
	wg.Wait()
	if n := pendingTexts(st); n > 0 {
		fmt.Fprintf(e.stderr, "petrel tui: %d message(s) are queued in this home; the next 'petrel send', 'recv', 'chat' or 'tui' delivers them\n", n)
	}
	if perr != nil && !errors.Is(perr, tea.ErrProgramKilled) && !errors.Is(perr, context.Canceled) {
		return fail(e, cmd, perr)
	}
	return 0
}

func newTUIModel(ctx context.Context, c *client.Client, st *store.Store, bell, notify bool) *tuiModel {
	return &tuiModel{ctx: ctx, c: c, st: st, me: c.Account().Name, bell: bell, notify: notify,
		convs: map[string]*tuiConv{}, target: &typingTarget{}, width: 80, height: 24}
}

// pendingTexts counts the text messages the server has not acked yet.
func pendingTexts(st *store.Store) int {
	n := 0
	_ = st.View(func(tx *store.Tx) error {
		p, err := tx.PendingOutbox(outboxListMax)
		for _, o := range p {
			if o.Kind == store.KindText {
				n++
			}
		}
		return err
	})
	return n
}

// load reads the conversations from the store: the newest tuiScan records and every group.
func (m *tuiModel) load() error {
	err := m.st.View(func(tx *store.Tx) error {
		var before uint64
		for scanned := 0; scanned < tuiScan; {
			page, err := tx.HistoryBefore(before, 512)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				break
			}
			for _, r := range page {
				before = r.Seq
				scanned++
				if r.Unverified {
					continue
				}
				cv := m.conv(convKey(r), r.Group)
				if len(cv.items) < tuiKeep {
					cv.items = append(cv.items, m.itemOf(r))
				}
				if r.Shown() && !r.Seen && r.GroupEvent == nil {
					cv.unread++
				}
			}
		}
		gs, err := tx.Groups()
		for _, g := range gs {
			m.conv(store.GroupKey(g.ID), g.ID)
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, cv := range m.convs {
		slices.Reverse(cv.items)
		if n := len(cv.items); n > 0 {
			it := cv.items[n-1]
			cv.last, cv.preview = it.at, m.previewOf(it)
		}
	}
	m.sortConvs()
	if len(m.order) > 0 {
		m.openConv(m.order[0])
	}
	m.queued = pendingTexts(m.st)
	return nil
}

// conv returns (making it) the conversation key; group is its group id for a group.
func (m *tuiModel) conv(key, group string) *tuiConv {
	if cv, ok := m.convs[key]; ok {
		return cv
	}
	cv := &tuiConv{key: key, group: group, title: key, typing: map[string]time.Time{}}
	if group != "" {
		cv.title = m.c.GroupName(group)
		if cv.title == "" {
			cv.title = "group " + group
		}
	}
	m.convs[key] = cv
	return cv
}

func (m *tuiModel) itemOf(r *store.HistoryRecord) *tuiItem {
	it := &tuiItem{seq: r.Seq, id: r.ID, from: recordFrom(r, m.me), group: r.Group, at: recordTime(r),
		own: r.Dir == store.Outgoing && !r.Synced, synced: r.Synced, status: r.Status, fail: r.Failure,
		unseen: r.Shown() && !r.Seen}
	if r.GroupEvent != nil || r.Timer {
		it.note, it.text = true, recordText(r, m.me)
	} else {
		it.text = r.Body
	}
	return it
}

func (m *tuiModel) previewOf(it *tuiItem) string {
	switch {
	case it.note:
		return it.text
	case it.own || it.synced:
		return "you: " + it.text
	}
	return it.from + ": " + it.text
}

// sortConvs orders the conversations by their last activity, most recent first.
func (m *tuiModel) sortConvs() {
	m.order = m.order[:0]
	for k := range m.convs {
		m.order = append(m.order, k)
	}
	slices.SortFunc(m.order, func(a, b string) int {
		ca, cb := m.convs[a], m.convs[b]
		if c := cb.last.Compare(ca.last); c != 0 {
			return c
		}
		return strings.Compare(ca.title, cb.title)
	})
}

// openConv makes key the open conversation, scrolled to its first unseen message when the newest
// would hide it. Its messages become seen and read as they are drawn (tui_drawn.go).
func (m *tuiModel) openConv(key string) {
	cv, ok := m.convs[key]
	if !ok {
		return
	}
	m.open, m.scroll, m.search, m.help = key, 0, "", false
	m.drawn = nil
	m.target.set(cv.key, cv.group)
	_, right, bodyH := m.panes(cv)
	lines, owners := m.convLines(cv, right)
	for i, it := range owners {
		if it != nil && it.unseen {
			if len(lines)-i > bodyH {
				m.scroll = len(lines) - i - bodyH
			}
			break
		}
	}
}

// Init starts the tick.
func (m *tuiModel) Init() tea.Cmd { return tick() }

func tick() tea.Cmd { return tea.Tick(tuiTick, func(time.Time) tea.Msg { return tuiTickMsg{} }) }

// Update handles keys, client events and ticks.
func (m *tuiModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	m.markDrawn() // what the views so far have shown long enough
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyPressMsg:
		return m, m.key(msg)
	case tea.PasteMsg:
		m.input.Insert(msg.Content)
		m.typing.keystroke()
	case tuiEventMsg:
		return m, m.event(msg.ev)
	case tuiTickMsg:
		m.refresh()
		return m, tick()
	case tuiRefreshMsg:
		m.refresh()
	case presenceBatch:
		for _, pm := range msg {
			if em, ok := pm.(tuiEventMsg); ok {
				m.event(em.ev)
			}
		}
	case tuiNoticeMsg:
		m.notice = string(msg)
		m.refresh()
	case tuiGroupCreated:
		m.groupCreated(msg.id)
		m.notice = msg.notice
		m.refresh()
	case tuiRunEnded:
		m.conn = connStopped
		if msg.err != nil && !errors.Is(msg.err, client.ErrClosed) {
			m.stopErr = describe(msg.err)
		}
	}
	return m, nil
}

// tuiKeys are the tui's key bindings.
var tuiKeys = struct {
	quit, quitEmpty, next, prev, pageUp, pageDown, clear, send, backspace, del, left, right, home, end, word, kill key.Binding
}{
	quit:      key.NewBinding(key.WithKeys("ctrl+c"), key.WithHelp("Ctrl-C", "quit")),
	quitEmpty: key.NewBinding(key.WithKeys("ctrl+d"), key.WithHelp("Ctrl-D", "quit (empty line)")),
	next:      key.NewBinding(key.WithKeys("tab", "ctrl+n", "down"), key.WithHelp("Tab", "next conversation")),
	prev:      key.NewBinding(key.WithKeys("shift+tab", "ctrl+p", "up"), key.WithHelp("Shift-Tab", "previous conversation")),
	pageUp:    key.NewBinding(key.WithKeys("pgup"), key.WithHelp("PgUp", "scroll up")),
	pageDown:  key.NewBinding(key.WithKeys("pgdown"), key.WithHelp("PgDn", "scroll down")),
	clear:     key.NewBinding(key.WithKeys("esc"), key.WithHelp("Esc", "close help, clear search")),
	send:      key.NewBinding(key.WithKeys("enter"), key.WithHelp("Enter", "send")),
	backspace: key.NewBinding(key.WithKeys("backspace", "ctrl+h")),
	del:       key.NewBinding(key.WithKeys("delete")),
	left:      key.NewBinding(key.WithKeys("left", "ctrl+b")),
	right:     key.NewBinding(key.WithKeys("right", "ctrl+f")),
	home:      key.NewBinding(key.WithKeys("home", "ctrl+a")),
	end:       key.NewBinding(key.WithKeys("end", "ctrl+e")),
	word:      key.NewBinding(key.WithKeys("ctrl+w")),
	kill:      key.NewBinding(key.WithKeys("ctrl+u")),
}

// key handles a key press.
func (m *tuiModel) key(k tea.KeyPressMsg) tea.Cmd {
	b := &tuiKeys
	switch {
	case key.Matches(k, b.quit):
		return tea.Quit
	case key.Matches(k, b.quitEmpty):
		if m.input.Empty() {
			return tea.Quit
		}
		m.input.Delete()
	case key.Matches(k, b.next):
		m.step(1)
	case key.Matches(k, b.prev):
		m.step(-1)
	case key.Matches(k, b.pageUp):
		m.scroll += max(1, m.height/2)
	case key.Matches(k, b.pageDown):
		m.scroll = max(0, m.scroll-max(1, m.height/2))
	case key.Matches(k, b.clear):
		m.search, m.help, m.notice = "", false, ""
	case key.Matches(k, b.send):
		line := m.input.String()
		m.input.Reset()
		return m.submit(line)
	case key.Matches(k, b.backspace):
		m.input.Backspace()
	case key.Matches(k, b.del):
		m.input.Delete()
	case key.Matches(k, b.left):
		m.input.Left()
	case key.Matches(k, b.right):
		m.input.Right()
	case key.Matches(k, b.home):
		m.input.Home()
	case key.Matches(k, b.end):
		m.input.End()
	case key.Matches(k, b.word):
		m.input.DeleteWord()
	case key.Matches(k, b.kill):
		m.input.KillToStart()
	default:
		if k.Text != "" && k.Mod&(tea.ModCtrl|tea.ModAlt) == 0 {
			m.input.Insert(k.Text)
			m.typing.keystroke()
		}
	}
	return nil
}

// step opens the next (d=1) or previous (d=-1) conversation of the list.
func (m *tuiModel) step(d int) {
	if len(m.order) == 0 {
		return
	}
	i := slices.Index(m.order, m.open)
	i = ((i+d)%len(m.order) + len(m.order)) % len(m.order)
	m.openConv(m.order[i])
}

// submit handles an entered line: a command, or a message to the open conversation.
func (m *tuiModel) submit(line string) tea.Cmd {
	text := strings.TrimSpace(line)
	if text == "" {
		return nil
	}
	if strings.HasPrefix(text, "//") {
		return m.send(line[strings.Index(line, "/")+1:])
	}
	if strings.HasPrefix(text, "/") {
		return m.command(text)
	}
	return m.send(line)
}

// send queues text for the open conversation and shows it at once (… queued, then its marks).
func (m *tuiModel) send(text string) tea.Cmd {
	cv, ok := m.convs[m.open]
	if !ok {
		m.notice = "no conversation is open: /new NAME starts one"
		return nil
	}
	var id string
	var err error
	if cv.group != "" {
		id, err = m.c.EnqueueGroup(cv.group, text)
	} else {
		id, err = m.c.Enqueue(cv.key, text)
	}
	if err != nil {
		m.notice = "not sent: " + describe(err)
		return nil
	}
	m.typing.stopped()
	now := time.Now()
	m.add(cv, &tuiItem{id: id, from: m.me, own: true, text: text, at: now, status: store.StatusPending})
	m.scroll = 0
	m.queued = pendingTexts(m.st)
	ctx := m.ctx
	c := m.c
	return func() tea.Msg {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_ = c.Flush(fctx) // the server's ack; the marks come from the store
		return tuiRefreshMsg{}
	}
}

// add appends an item to a conversation, bounded, and moves it to the top of the list.
func (m *tuiModel) add(cv *tuiConv, it *tuiItem) {
	cv.items = append(cv.items, it)
	if len(cv.items) > tuiKeep {
		cv.items = slices.Delete(cv.items, 0, len(cv.items)-tuiKeep)
	}
	if it.at.After(cv.last) || cv.last.IsZero() {
		cv.last = it.at
	}
	cv.preview = m.previewOf(it)
	m.sortConvs()
}

// command runs a /command.
func (m *tuiModel) command(text string) tea.Cmd {
	fields := strings.Fields(text)
	name, args := fields[0], fields[1:]
	m.help = false
	switch name {
	case "/help", "/?":
		m.help = true
	case "/quit", "/q", "/exit":
		return tea.Quit
	case "/new":
		if len(args) != 1 {
			m.notice = "usage: /new NAME"
			return nil
		}
		peer := strings.ToLower(args[0])
		if !petrelv1.ValidName(peer) {
			m.notice = fmt.Sprintf("%q is not an account name (1-32 of a-z 0-9 _ . -)", sanitize(args[0]))
			return nil
		}
		if peer == m.me {
			m.notice = "that is you: choose another account"
			return nil
		}
		cv := m.conv(peer, "")
		if cv.last.IsZero() {
			cv.last = time.Now()
		}
		m.sortConvs()
		m.openConv(peer)
		return m.subscribe()
	case "/group":
		return m.groupCommand(args)
	case "/search":
		m.search = strings.TrimSpace(strings.TrimPrefix(text, name))
		m.scroll = 0
		if m.search == "" {
			m.notice = "search cleared"
		}
	default:
		m.notice = fmt.Sprintf("unknown command %s: /help lists the commands (start with // to send a message that begins with /)", sanitize(name))
	}
	return nil
}

// groupCommand runs /group create NAME USER... | add USER... | remove USER... | leave (the last
// three on the open group) through the SDK, in the background.
func (m *tuiModel) groupCommand(args []string) tea.Cmd {
	const usage = "usage: /group create NAME USER... | /group add USER... | /group remove USER... | /group leave"
	if len(args) == 0 {
		m.notice = usage
		return nil
	}
	ctx, c := m.ctx, m.c
	run := func(what string, f func(ctx context.Context) (string, error)) tea.Cmd {
		m.notice = what + "…"
		return func() tea.Msg {
			gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			done, err := f(gctx)
			if err != nil {
				return tuiNoticeMsg(what + " failed: " + describe(err))
			}
			return tuiNoticeMsg(done)
		}
	}
	if args[0] == "create" {
		if len(args) < 3 {
			m.notice = "usage: /group create NAME USER... (the name is one word here; petrel group create takes any)"
			return nil
		}
		gname, members := args[1], splitMembers(args[2:])
		what := "creating group " + sanitize(gname)
		m.notice = what + "…"
		return func() tea.Msg {
			gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			g, err := c.CreateGroup(gctx, gname, members)
			if err != nil {
				return tuiNoticeMsg(what + " failed: " + describe(err))
			}
			return tuiGroupCreated{id: g.ID, notice: fmt.Sprintf("created group %s with %s", sanitize(g.Name), sanitize(strings.Join(g.Members, ", ")))}
		}
	}
	cv, ok := m.convs[m.open]
	if !ok || cv.group == "" {
		m.notice = "open a group first (Tab), or /group create NAME USER..."
		return nil
	}
	gid, title := cv.group, cv.title
	switch args[0] {
	case "add", "remove":
		users := splitMembers(args[1:])
		if len(users) == 0 {
			m.notice = usage
			return nil
		}
		verb := map[string]string{"add": "added", "remove": "removed"}[args[0]]
		return run(args[0]+" "+sanitize(strings.Join(users, ", ")), func(ctx context.Context) (string, error) {
			var err error
			if args[0] == "add" {
				err = c.AddToGroup(ctx, gid, users...)
			} else {
				err = c.RemoveFromGroup(ctx, gid, users...)
			}
			return fmt.Sprintf("%s %s (group %s)", verb, sanitize(strings.Join(users, ", ")), sanitize(title)), err
		})
	case "leave":
		return run("leaving "+sanitize(title), func(ctx context.Context) (string, error) {
			return "left group " + sanitize(title), c.LeaveGroup(ctx, gid)
		})
	}
	m.notice = usage
	return nil
}

func splitMembers(args []string) []string {
	var out []string
	for _, a := range args {
		for _, u := range strings.Split(a, ",") {
			if u = strings.ToLower(strings.TrimSpace(u)); u != "" {
				out = append(out, u)
			}
		}
	}
	return out
}

// groupCreated lists and opens a group this device just created, with its first membership line
// (the creator's own change is stored seen and never comes as an event).
func (m *tuiModel) groupCreated(id string) {
	key := store.GroupKey(id)
	cv := m.conv(key, id)
	if n := m.c.GroupName(id); n != "" {
		cv.title = n
	}
	var rec *store.HistoryRecord
	_ = m.st.View(func(tx *store.Tx) error {
		r, err := tx.HistoryByID(store.Incoming, key, "v1")
		if err == nil {
			rec = r
		}
		return nil
	})
	switch {
	case rec != nil && !slices.ContainsFunc(cv.items, func(it *tuiItem) bool { return it.seq == rec.Seq }):
		m.add(cv, m.itemOf(rec))
	case cv.last.IsZero():
		cv.last = time.Now()
		m.sortConvs()
	}
	m.openConv(key)
}

// subscribe asks for the presence of the 1:1 conversations' accounts (once connected).
func (m *tuiModel) subscribe() tea.Cmd {
	var names []string
	for _, k := range m.order {
		if cv := m.convs[k]; cv.group == "" && len(names) < tuiPresenceMax {
			names = append(names, k)
		}
	}
	if len(names) == 0 || m.conn != connOnline {
		return nil
	}
	ctx, c := m.ctx, m.c
	return func() tea.Msg {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := c.SubscribePresence(pctx, names...)
		if err != nil {
			return nil
		}
		var batch []tea.Msg
		for _, p := range res {
			batch = append(batch, tuiEventMsg{&client.PresenceChanged{Presence: p}})
		}
		return presenceBatch(batch)
	}
}

// presenceBatch carries the answer of a presence subscription.
type presenceBatch []tea.Msg

// event handles a client event.
func (m *tuiModel) event(ev client.Event) tea.Cmd {
	switch ev := ev.(type) {
	case *client.Message:
		return m.message(ev)
	case *client.Connected:
		if m.everConnected {
			m.reconnected = time.Now()
		}
		m.conn, m.everConnected = connOnline, true
		m.queued = pendingTexts(m.st)
		return m.subscribe()
	case *client.Disconnected:
		m.conn, m.retryIn, m.retryAt = connOffline, ev.RetryIn, time.Now().Add(ev.RetryIn)
		m.queued = pendingTexts(m.st)
	case *client.Delivered, *client.Read:
		m.refresh()
	case *client.SendFailed:
		m.notice = fmt.Sprintf("message to %s failed: %s", sanitize(displayPeer(m, ev.To)), describe(ev.Err))
		m.refresh()
	case *client.Typing:
		key := ev.From
		if ev.Group != "" {
			key = store.GroupKey(ev.Group)
		}
		if cv, ok := m.convs[key]; ok {
			if ev.Typing {
				cv.typing[ev.From] = time.Now().Add(typingShown)
			} else {
				delete(cv.typing, ev.From)
			}
		}
	case *client.PresenceChanged:
		if cv, ok := m.convs[ev.Account]; ok && cv.group == "" {
			cv.online = ev.State == client.PresenceOnline
			cv.presence = strings.Trim(presenceLine(ev.Presence), "[]")
		}
	case *client.IdentityChanged, *client.DecryptFailed, *client.DevicesChanged:
		var b bytes.Buffer
		warnEvent(&env{stderr: &b}, "tui", ev)
		m.notice = strings.TrimPrefix(strings.TrimSpace(b.String()), "petrel tui: ")
	}
	return nil
}

func displayPeer(m *tuiModel, to string) string {
	if gid := store.GroupOf(to); gid != "" {
		if n := m.c.GroupName(gid); n != "" {
			return n
		}
	}
	return to
}

// message shows a received message: in the open conversation it is seen and read at once;
// another conversation counts it as unread and rings the bell.
func (m *tuiModel) message(ev *client.Message) tea.Cmd {
	key := ev.From
	switch {
	case ev.Group != "":
		key = store.GroupKey(ev.Group)
	case ev.Outgoing:
		key = ev.To
	}
	cv := m.conv(key, ev.Group)
	if ev.GroupEvent != nil {
		if n := m.c.GroupName(ev.Group); n != "" {
			cv.title = n
		}
	}
	it := &tuiItem{seq: ev.Seq, id: ev.ID, from: ev.From, group: ev.Group, synced: ev.Outgoing, text: ev.Text,
		at: ev.ServerTime, unseen: true, status: store.StatusSent}
	if it.at.IsZero() {
		it.at = ev.ReceivedAt
	}
	switch {
	case ev.GroupEvent != nil:
		it.note, it.text = true, ev.GroupEvent.String()
	case ev.Timer:
		who := ev.From
		if ev.Outgoing {
			who = "you"
		}
		it.note, it.text = true, timerText(who, ev.TimerSet)
	}
	delete(cv.typing, ev.From)
	m.add(cv, it)
	if m.open == "" {
		m.openConv(key)
		return nil
	}
	if m.open == key {
		return nil // seen and read once drawn (tui_drawn.go)
	}
	if it.note || ev.Outgoing {
		m.markSeenQuiet(it)
		return nil
	}
	cv.unread++
	var cmds []tea.Cmd
	if m.bell {
		cmds = append(cmds, tea.Raw("\a"))
	}
	if m.notify {
		what := "new message from " + sanitize(ev.From)
		if ev.Group != "" {
			what += " in " + sanitize(cv.title)
		}
		what = strings.NewReplacer(";", ",", "\a", "", "\x1b", "").Replace(what)
		cmds = append(cmds, tea.Raw("\x1b]9;petrel: "+what+"\a"), tea.Raw("\x1b]777;notify;petrel;"+what+"\a"))
	}
	return tea.Batch(cmds...)
}

// markSeenQuiet marks a note or an own message from another device seen without a receipt.
func (m *tuiModel) markSeenQuiet(it *tuiItem) {
	it.unseen = false
	_ = m.c.MarkSeen(it.seq)
}

// refresh re-reads the marks of the open conversation's recent own messages from the store (the
// truth: the SDK updates it on the server's ack and on receipts), the queue count and the typing
// indicators that expired.
func (m *tuiModel) refresh() {
	m.queued = pendingTexts(m.st)
	now := time.Now()
	if m.notice != m.lastNotice {
		m.lastNotice, m.noticeAt = m.notice, now
	} else if m.notice != "" && now.Sub(m.noticeAt) > noticeShown {
		m.notice, m.lastNotice = "", ""
	}
	for _, cv := range m.convs {
		for who, until := range cv.typing {
			if now.After(until) {
				delete(cv.typing, who)
			}
		}
	}
	cv, ok := m.convs[m.open]
	if !ok {
		return
	}
	var todo []*tuiItem
	for i := len(cv.items) - 1; i >= 0 && len(todo) < tuiMarkRefresh; i-- {
		if it := cv.items[i]; it.own && it.status != store.StatusRead && it.status != store.StatusFailed {
			todo = append(todo, it)
		}
	}
	if len(todo) == 0 {
		return
	}
	_ = m.st.View(func(tx *store.Tx) error {
		for _, it := range todo {
			if r, err := tx.HistoryByID(store.Outgoing, cv.key, it.id); err == nil {
				it.status, it.fail, it.seq = r.Status, r.Failure, r.Seq
			}
		}
		return nil
	})
}
