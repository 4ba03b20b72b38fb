// Command chaos runs real litecluster-node members under a nemesis and checks the history of
// concurrent register operations for linearizability (porcupine), then that every member holds
// the same data and that no member panicked.
//
//	go run . -runs 20 -seconds 60 -level linearizable     # long runs
//	go run . -runs 2 -seconds 20                          # what CI runs
//	go run . -seed 1234 -runs 1                           # replay one run
//
// Needs root (network namespaces, iptables, tmpfs mounts), iproute2 and iptables.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

type runReport struct {
	Seed         int64
	Level        string
	Attempted    int64
	OK           int64
	Failed       int64
	Unknown      int64
	Faults       []faultRecord
	Linearizable string
	Identical    bool
	Panics       int
	Outage       time.Duration
	Problems     []string
}

func main() {
	runs := flag.Int("runs", 1, "number of runs")
	seconds := flag.Int("seconds", 30, "length of each run's fault phase, in seconds")
	seed := flag.Int64("seed", 0, "seed of the first run (0: from the clock); run i uses seed+i")
	level := flag.String("level", "linearizable", "read level: linearizable or strong")
	members := flag.Int("members", 3, "members: 3 or 5")
	clients := flag.Int("clients", 8, "concurrent clients")
	faults := flag.String("faults", strings.Join(allFaults, ","), "fault kinds, comma-separated")
	minHold := flag.Duration("min-fault", 3*time.Second, "shortest fault")
	maxHold := flag.Duration("max-fault", 6*time.Second, "longest fault")
	bin := flag.String("bin", "", "litecluster-node binary (default: ../target/{release,debug}/litecluster-node)")
	out := flag.String("out", "chaos-out", "where histories and logs of failed runs go")
	keep := flag.Bool("keep", false, "keep logs of passing runs too")
	flag.Parse()

	if *level != "linearizable" && *level != "strong" {
		fail("-level must be linearizable or strong")
	}
	if *bin == "" {
		for _, p := range []string{"../target/release/litecluster-node", "../target/debug/litecluster-node"} {
			if _, err := os.Stat(p); err == nil {
				*bin = p
				break
			}
		}
	}
	if *bin == "" {
		fail("no litecluster-node binary: build it (cargo build --release -p litecluster-node) or pass -bin")
	}
	abs, _ := filepath.Abs(*bin)
	kinds := strings.Split(*faults, ",")
	for _, k := range kinds {
		if !contains(allFaults, k) {
			fail(fmt.Sprintf("unknown fault %q; known: %s", k, strings.Join(allFaults, ", ")))
		}
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano() % 1_000_000_000
	}
	fmt.Printf("chaos: %d run(s) of %ds, %d members, %d clients, level=%s, first seed %d (replay: -seed N -runs 1)\n",
		*runs, *seconds, *members, *clients, *level, *seed)
	var reports []runReport
	bad := 0
	for i := 0; i < *runs; i++ {
		s := *seed + int64(i)
		dir := filepath.Join(*out, fmt.Sprintf("run-%d", s))
		_ = os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fail(err.Error())
		}
		r := oneRun(abs, dir, s, *level, *members, *clients, kinds, time.Duration(*seconds)*time.Second, *minHold, *maxHold)
		reports = append(reports, r)
		printRow(r)
		if len(r.Problems) > 0 {
			bad++
			fmt.Printf("  run %d FAILED: %s\n  history and logs: %s\n", s, strings.Join(r.Problems, "; "), dir)
		} else if !*keep {
			_ = os.RemoveAll(dir)
		}
	}
	summary(reports)
	if bad > 0 {
		os.Exit(1)
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "chaos:", msg)
	os.Exit(2)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func oneRun(bin, dir string, seed int64, level string, n, nclients int, kinds []string, length, minHold, maxHold time.Duration) runReport {
	r := runReport{Seed: seed, Level: level, Linearizable: "n/a"}
	logFile, _ := os.Create(filepath.Join(dir, "nemesis.log"))
	defer logFile.Close()
	var logMu sync.Mutex
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(logFile, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
	problem := func(format string, args ...any) {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
	c, err := newCluster(bin, dir, n, logf)
	if err != nil {
		problem("setting up: %v", err)
		return r
	}
	defer c.close()
	if err := c.start(c.members[0], "--bootstrap"); err != nil {
		problem("starting member 1: %v", err)
		return r
	}
	if !waitFor(30*time.Second, func() bool { return c.ready(c.members[0]) }) {
		problem("member 1 never became ready")
		return r
	}
	for _, m := range c.members[1:] {
		if err := c.start(m, "--join", c.members[0].url()); err != nil {
			problem("starting member %d: %v", m.id, err)
			return r
		}
	}
	var leader *member
	if !waitFor(60*time.Second, func() bool {
		var ok bool
		leader, ok = c.leader()
		if !ok {
			return false
		}
		s, err := c.status(leader)
		return err == nil && s.Store.Raft.State == "Leader" && allReady(c)
	}) {
		problem("the cluster never formed")
		return r
	}
	if err := setupRegisters(c, leader); err != nil {
		problem("%v", err)
		return r
	}

	h := &history{start: time.Now()}
	var cnt counters
	stopClients := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < nclients; i++ {
		wg.Add(1)
		go client(i, c, level, seed*100+int64(i), h, &cnt, stopClients, &wg)
	}
	nem := &nemesis{c: c, rng: rand.New(rand.NewSource(seed)), kinds: kinds, minDur: minHold, maxDur: maxHold, level: level, log: logf}
	stopNemesis := make(chan struct{})
	faultsCh := make(chan []faultRecord)
	go func() { faultsCh <- nem.run(stopNemesis) }()
	time.Sleep(length)
	close(stopNemesis)
	r.Faults = <-faultsCh
	c.heal()
	if nem.recover() < 0 {
		problem("the cluster did not recover within a minute after the last fault")
	}
	// A few quiet seconds of traffic after healing, then stop.
	time.Sleep(2 * time.Second)
	close(stopClients)
	wg.Wait()
	end := time.Now()
	r.Attempted, r.OK, r.Failed, r.Unknown = cnt.attempted.Load(), cnt.ok.Load(), cnt.failed.Load(), cnt.unknown.Load()
	r.Outage = h.longestOutage(h.start, end)
	for i := range r.Faults {
		f := &r.Faults[i]
		f.Outage = h.longestOutage(f.Start, f.End)
	}
	for _, f := range r.Faults {
		if f.Recovery < 0 {
			problem("no recovery after %s on %s", f.Kind, f.Target)
		}
		if strings.HasPrefix(f.Note, "DISRUPTED") {
			problem("%s on %s: %s", f.Kind, f.Target, f.Note)
		}
	}

	res, info := porcupine.CheckOperationsVerbose(registerModel, pruneUnobserved(h.ops), time.Minute)
	if res != porcupine.Ok {
		res, info = porcupine.CheckOperationsVerbose(registerModel, h.ops, 2*time.Minute)
	}
	r.Linearizable = string(res)
	if res != porcupine.Ok {
		problem("history is %s", res)
		_ = porcupine.VisualizePath(registerModel, info, filepath.Join(dir, "history.html"))
	}
	if b, err := json.Marshal(h.ops); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "history.json"), b, 0o644)
	}

	r.Identical = identical(c, problem)
	for _, m := range c.members {
		p := m.panics()
		r.Panics += len(p)
		if len(p) > 0 {
			problem("member %d panicked: %s", m.id, p[0])
		}
	}
	return r
}

func allReady(c *cluster) bool {
	for _, m := range c.members {
		if !c.ready(m) {
			return false
		}
	}
	return true
}

func waitFor(limit time.Duration, f func() bool) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if f() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// identical waits until every member has applied the same index, then compares their rows.
func identical(c *cluster, problem func(string, ...any)) bool {
	var target uint64
	ok := waitFor(60*time.Second, func() bool {
		var idx []uint64
		for _, m := range c.members {
			s, err := c.status(m)
			if err != nil {
				return false
			}
			idx = append(idx, s.Store.Raft.AppliedIndex)
		}
		sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
		target = idx[len(idx)-1]
		return idx[0] == target
	})
	if !ok {
		problem("members did not reach the same applied index")
		return false
	}
	var first string
	for i, m := range c.members {
		resp, err := c.http.Get(m.url() + "/db/query?level=none&q=SELECT+k,v+FROM+r+ORDER+BY+k")
		if err != nil {
			problem("reading member %d: %v", m.id, err)
			return false
		}
		var body strings.Builder
		_, _ = fmt.Fprint(&body, readAll(resp))
		if i == 0 {
			first = body.String()
		} else if body.String() != first {
			problem("member %d differs: %s vs %s", m.id, body.String(), first)
			return false
		}
	}
	return true
}

func printRow(r runReport) {
	kinds := map[string]int{}
	var maxRec time.Duration
	for _, f := range r.Faults {
		kinds[f.Kind]++
		if f.Recovery > maxRec {
			maxRec = f.Recovery
		}
	}
	var ks []string
	for k, v := range kinds {
		ks = append(ks, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(ks)
	fmt.Printf("| %d | %s | %d/%d/%d/%d | %s | %s | same=%v | panics=%d | max recovery %.2fs | longest write outage %.2fs |\n",
		r.Seed, r.Level, r.Attempted, r.OK, r.Failed, r.Unknown, strings.Join(ks, " "), r.Linearizable,
		r.Identical, r.Panics, maxRec.Seconds(), r.Outage.Seconds())
}

// summary prints recovery times by fault kind over all runs.
func summary(reports []runReport) {
	by := map[string][]time.Duration{}
	outages := map[string][]time.Duration{}
	for _, r := range reports {
		for _, f := range r.Faults {
			by[f.Kind] = append(by[f.Kind], f.Recovery)
			outages[f.Kind] = append(outages[f.Kind], f.Outage)
		}
	}
	var kinds []string
	for k := range by {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Println("after each fault, seconds (min / median / max): recovery once healed | longest write outage from injection to recovery")
	for _, k := range kinds {
		d, o := by[k], outages[k]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		sort.Slice(o, func(i, j int) bool { return o[i] < o[j] })
		fmt.Printf("  %-16s n=%-3d %.2f / %.2f / %.2f | %.2f / %.2f / %.2f\n", k, len(d),
			d[0].Seconds(), d[len(d)/2].Seconds(), d[len(d)-1].Seconds(),
			o[0].Seconds(), o[len(o)/2].Seconds(), o[len(o)-1].Seconds())
	}
}
