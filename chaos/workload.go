package main

// Clients over a few registers: writes, compare-and-set and reads through random members,
// every operation recorded with its invocation and completion for the linearizability check.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
)

const registers = 5

type opKind int

const (
	opRead opKind = iota
	opWrite
	opCAS
)

type regInput struct {
	Kind     opKind
	Key      int
	Value    int // write, CAS new
	Expected int // CAS
}

type regOutput struct {
	Value   int  // read
	OK      bool // CAS applied
	Unknown bool // a write or CAS that timed out or failed without a definite answer
}

// registerModel: one register per key, partitioned by key. An operation whose outcome is
// unknown completes at the end of the history, so it may take effect at any point or never.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(regInput).Key
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for k := 0; k < registers; k++ {
			if len(by[k]) > 0 {
				out = append(out, by[k])
			}
		}
		return out
	},
	Init: func() interface{} { return 0 },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s, in, out := state.(int), input.(regInput), output.(regOutput)
		switch in.Kind {
		case opRead:
			return out.Value == s, s
		case opWrite:
			return true, in.Value
		default:
			if out.Unknown {
				if s == in.Expected {
					return true, in.Value
				}
				return true, s
			}
			if out.OK {
				return s == in.Expected, in.Value
			}
			return s != in.Expected, s
		}
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(regInput), output.(regOutput)
		suffix := ""
		if out.Unknown {
			suffix = " (unknown)"
		}
		switch in.Kind {
		case opRead:
			return fmt.Sprintf("read(k%d) -> %d", in.Key, out.Value)
		case opWrite:
			return fmt.Sprintf("write(k%d, %d)%s", in.Key, in.Value, suffix)
		default:
			return fmt.Sprintf("cas(k%d, %d -> %d) -> %v%s", in.Key, in.Expected, in.Value, out.OK, suffix)
		}
	},
}

type counters struct {
	attempted, ok, failed, unknown atomic.Int64
}

type history struct {
	mu  sync.Mutex
	ops []porcupine.Operation
	// okWrites are completion times of acknowledged writes and CASes (for outages).
	okWrites []time.Time
	start    time.Time
}

func (h *history) add(op porcupine.Operation, okWrite bool, done time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	if okWrite {
		h.okWrites = append(h.okWrites, done)
	}
}

// longestOutage is the longest time without an acknowledged write between from and to.
func (h *history) longestOutage(from, to time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	ts := []time.Time{from, to}
	for _, t := range h.okWrites {
		if t.After(from) && t.Before(to) {
			ts = append(ts, t)
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	var max time.Duration
	for i := 1; i < len(ts); i++ {
		if d := ts[i].Sub(ts[i-1]); d > max {
			max = d
		}
	}
	return max
}

type result struct {
	Results []struct {
		RowsAffected int     `json:"rows_affected"`
		Error        string  `json:"error"`
		Values       [][]int `json:"values"`
	} `json:"results"`
}

// client runs operations until stop closes.
func client(id int, c *cluster, level string, seed int64, h *history, n *counters, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewSource(seed))
	hc := &http.Client{Timeout: 2 * time.Second}
	next := id * 1_000_000
	// Like an rqlite client with several hosts: a member that failed is left alone for a few
	// seconds (unless all have failed), so availability is the cluster's, not one member's.
	bad := map[*member]time.Time{}
	for {
		select {
		case <-stop:
			return
		default:
		}
		var good []*member
		for _, x := range c.members {
			if time.Since(bad[x]) > 3*time.Second {
				good = append(good, x)
			}
		}
		if len(good) == 0 {
			good = c.members
		}
		m := good[rng.Intn(len(good))]
		in := regInput{Key: rng.Intn(registers)}
		switch r := rng.Intn(10); {
		case r < 4:
			in.Kind = opRead
		case r < 7:
			in.Kind = opWrite
			next++
			in.Value = next
		default:
			in.Kind = opCAS
			in.Expected = rng.Intn(3)
			if rng.Intn(2) == 0 {
				// Often CAS from a value a client wrote recently, so some succeed.
				in.Expected = next
			}
			next++
			in.Value = next
		}
		n.attempted.Add(1)
		call := time.Now()
		out, outcome := do(hc, m, level, in)
		done := time.Now()
		if outcome != applied {
			bad[m] = done
		}
		op := porcupine.Operation{ClientId: id, Input: in, Call: call.Sub(h.start).Nanoseconds(), Output: out}
		switch {
		case outcome == notApplied || (in.Kind == opRead && outcome == unknown):
			// Refused before it reached the log, or a failed read: nothing to record.
			n.failed.Add(1)
			time.Sleep(50 * time.Millisecond)
			continue
		case outcome == unknown:
			n.unknown.Add(1)
			op.Output = regOutput{Unknown: true}
			op.Return = 1 << 62
			h.add(op, false, done)
		default:
			n.ok.Add(1)
			op.Return = done.Sub(h.start).Nanoseconds()
			h.add(op, in.Kind != opRead && (in.Kind == opWrite || out.OK), done)
		}
		if outcome == unknown {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

type outcome int

const (
	applied outcome = iota
	// notApplied: refused before it could enter the log (no connection, no leader known).
	notApplied
	// unknown: timed out, or failed after it may have entered the log.
	unknown
)

// do runs one operation and says whether it took effect.
func do(hc *http.Client, m *member, level string, in regInput) (regOutput, outcome) {
	key := fmt.Sprintf("k%d", in.Key)
	var resp *http.Response
	var err error
	switch in.Kind {
	case opRead:
		q := url.Values{"level": {level}, "q": {fmt.Sprintf("SELECT v FROM r WHERE k = '%s'", key)}}
		resp, err = hc.Get(m.url() + "/db/query?" + q.Encode())
	case opWrite:
		body := fmt.Sprintf(`[["UPDATE r SET v = ? WHERE k = ?", %d, %q]]`, in.Value, key)
		resp, err = hc.Post(m.url()+"/db/execute", "application/json", strings.NewReader(body))
	default:
		body := fmt.Sprintf(`[["UPDATE r SET v = ? WHERE k = ? AND v = ?", %d, %q, %d]]`, in.Value, key, in.Expected)
		resp, err = hc.Post(m.url()+"/db/execute", "application/json", strings.NewReader(body))
	}
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return regOutput{}, notApplied
		}
		return regOutput{}, unknown
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return regOutput{}, unknown
	}
	if resp.StatusCode != 200 {
		if strings.HasPrefix(string(body), "leader not found") {
			return regOutput{}, notApplied
		}
		return regOutput{}, unknown
	}
	var r result
	if err := json.Unmarshal(body, &r); err != nil || len(r.Results) != 1 || r.Results[0].Error != "" {
		return regOutput{}, unknown
	}
	switch in.Kind {
	case opRead:
		if len(r.Results[0].Values) != 1 || len(r.Results[0].Values[0]) != 1 {
			return regOutput{}, unknown
		}
		return regOutput{Value: r.Results[0].Values[0][0]}, applied
	case opWrite:
		if r.Results[0].RowsAffected != 1 {
			return regOutput{}, unknown
		}
		return regOutput{}, applied
	default:
		return regOutput{OK: r.Results[0].RowsAffected == 1}, applied
	}
}

func setupRegisters(c *cluster, leader *member) error {
	stmts := []string{"CREATE TABLE IF NOT EXISTS r (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"}
	for k := 0; k < registers; k++ {
		stmts = append(stmts, fmt.Sprintf("INSERT OR IGNORE INTO r VALUES ('k%d', 0)", k))
	}
	code, body, err := c.post(leader, "/db/execute", stmts)
	if err != nil || code != 200 {
		return fmt.Errorf("creating registers: %d %s %v", code, body, err)
	}
	return nil
}

// pruneUnobserved drops unknown writes and CASes whose value no read returned and no
// successful CAS expected. Any linearization of what is left is one of the whole history with
// the dropped operations placed last (they may complete at the end, and nothing then sees
// them), so "linearizable" on the pruned history holds for the whole one. The converse need
// not hold, so a pruned history that does not check is checked again whole.
func pruneUnobserved(ops []porcupine.Operation) []porcupine.Operation {
	seen := map[[2]int]bool{}
	for _, op := range ops {
		in, out := op.Input.(regInput), op.Output.(regOutput)
		switch {
		case in.Kind == opRead:
			seen[[2]int{in.Key, out.Value}] = true
		case in.Kind == opCAS && out.OK:
			seen[[2]int{in.Key, in.Expected}] = true
		}
	}
	var kept []porcupine.Operation
	for _, op := range ops {
		in, out := op.Input.(regInput), op.Output.(regOutput)
		if out.Unknown && !seen[[2]int{in.Key, in.Value}] {
			continue
		}
		kept = append(kept, op)
	}
	return kept
}
