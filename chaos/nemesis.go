package main

// The nemesis: one fault at a time on a seeded schedule, healed after a few seconds, and the
// time until the cluster serves again measured after each.

import (
	"fmt"
	"math/rand"
	"net/url"
	"syscall"
	"time"
)

var allFaults = []string{
	"kill", "kill-leader", "pause-leader", "isolate-leader", "isolate-follower",
	"split", "bridge", "disk-full", "membership",
}

type faultRecord struct {
	Start    time.Time
	End      time.Time     // healed and recovered
	Outage   time.Duration // longest time without an acknowledged write around the fault
	Kind     string
	Target   string
	Held     time.Duration
	Recovery time.Duration // -1: did not recover within the limit
	Note     string
}

type nemesis struct {
	c      *cluster
	rng    *rand.Rand
	kinds  []string
	minDur time.Duration
	maxDur time.Duration
	level  string
	log    func(string, ...any)
}

func (n *nemesis) followers() (leader *member, rest []*member, ok bool) {
	leader, ok = n.c.leader()
	if !ok {
		return nil, nil, false
	}
	for _, m := range n.c.members {
		if m != leader {
			rest = append(rest, m)
		}
	}
	return leader, rest, true
}

// run injects faults until stop closes, and returns what it did.
func (n *nemesis) run(stop <-chan struct{}) []faultRecord {
	var out []faultRecord
	for {
		select {
		case <-stop:
			return out
		case <-time.After(time.Duration(1000+n.rng.Intn(2000)) * time.Millisecond):
		}
		kind := n.kinds[n.rng.Intn(len(n.kinds))]
		hold := n.minDur + time.Duration(n.rng.Int63n(int64(n.maxDur-n.minDur)+1))
		start := time.Now()
		rec, err := n.inject(kind, hold)
		if err != nil {
			n.log("fault %s not injected: %v", kind, err)
			continue
		}
		rec.Start = start
		rec.Recovery = n.recover()
		rec.End = time.Now()
		n.log("fault %-16s on %-6s held %4.1fs, recovered in %5.2fs %s", rec.Kind, rec.Target,
			rec.Held.Seconds(), rec.Recovery.Seconds(), rec.Note)
		out = append(out, rec)
	}
}

func (n *nemesis) inject(kind string, hold time.Duration) (rec faultRecord, err error) {
	rec = faultRecord{Kind: kind, Held: hold}
	c := n.c
	leader, rest, ok := n.followers()
	if !ok {
		return rec, fmt.Errorf("no agreed leader")
	}
	switch kind {
	case "kill", "kill-leader":
		m := leader
		if kind == "kill" {
			m = c.members[n.rng.Intn(len(c.members))]
		}
		rec.Target = fmt.Sprint(m.id)
		c.kill(m)
		time.Sleep(hold)
		return rec, c.start(m)
	case "pause-leader":
		rec.Target = fmt.Sprint(leader.id)
		c.signal(leader, syscall.SIGSTOP)
		time.Sleep(hold)
		c.signal(leader, syscall.SIGCONT)
	case "isolate-leader", "isolate-follower":
		m := leader
		if kind == "isolate-follower" {
			m = rest[n.rng.Intn(len(rest))]
		}
		rec.Target = fmt.Sprint(m.id)
		before := leader
		defer func() {
			// A follower that comes back must not depose a healthy leader (pre-vote).
			if kind == "isolate-follower" {
				waitFor(10*time.Second, func() bool { _, ok := c.leader(); return ok })
				if after, ok := c.leader(); ok && after != before {
					rec.Note = fmt.Sprintf("DISRUPTED: leader moved from %d to %d", before.id, after.id)
				}
			}
		}()
		var others []*member
		for _, x := range c.members {
			if x != m {
				others = append(others, x)
			}
		}
		if err = c.partition([]*member{m}, others); err != nil {
			return rec, err
		}
		time.Sleep(hold)
		c.heal()
	case "split":
		perm := n.rng.Perm(len(c.members))
		minority := (len(c.members) - 1) / 2
		var a, b []*member
		for i, p := range perm {
			if i < minority {
				a = append(a, c.members[p])
			} else {
				b = append(b, c.members[p])
			}
		}
		rec.Target = names(a)
		if err := c.partition(a, b); err != nil {
			return rec, err
		}
		time.Sleep(hold)
		c.heal()
	case "bridge":
		// Two members cannot see each other; a third sees both.
		perm := n.rng.Perm(len(c.members))
		a, b := c.members[perm[0]], c.members[perm[1]]
		rec.Target = names([]*member{a, b})
		if err := c.partition([]*member{a}, []*member{b}); err != nil {
			return rec, err
		}
		time.Sleep(hold)
		c.heal()
	case "disk-full":
		m := c.members[n.rng.Intn(len(c.members))]
		rec.Target = fmt.Sprint(m.id)
		m.mu.Lock()
		before := m.restarts
		m.mu.Unlock()
		if err := m.fillDisk(); err != nil {
			return rec, err
		}
		// Writes go on; the member's own writes fail until space returns.
		time.Sleep(hold)
		if err := m.freeDisk(); err != nil {
			return rec, err
		}
		m.mu.Lock()
		rec.Note = fmt.Sprintf("(the member stopped and was restarted %d times while full)", m.restarts-before)
		m.mu.Unlock()
	case "membership":
		// Remove a follower, wipe it, and have it join again as a new voter.
		m := rest[n.rng.Intn(len(rest))]
		rec.Target = fmt.Sprint(m.id)
		code, body, err := c.send("DELETE", leader, "/remove", map[string]string{"id": fmt.Sprint(m.id)})
		if err != nil || code != 200 {
			return rec, fmt.Errorf("remove: %d %s %v", code, body, err)
		}
		c.kill(m)
		if err := m.wipe(); err != nil {
			return rec, err
		}
		time.Sleep(hold)
		return rec, c.start(m, "--join", leader.url())
	default:
		return rec, fmt.Errorf("unknown fault %q", kind)
	}
	return rec, nil
}

func names(ms []*member) string {
	s := ""
	for i, m := range ms {
		if i > 0 {
			s += "+"
		}
		s += fmt.Sprint(m.id)
	}
	return s
}

// recover waits until every member is ready and names the same leader, and the cluster serves
// a write and a read at the run's level. Returns -1 after a minute.
func (n *nemesis) recover() time.Duration {
	start := time.Now()
	for time.Since(start) < time.Minute {
		if n.healthy() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

func (n *nemesis) healthy() bool {
	c := n.c
	for _, m := range c.members {
		if !c.ready(m) {
			return false
		}
	}
	leader, ok := c.leader()
	if !ok {
		return false
	}
	code, _, err := c.post(leader, "/db/execute", []string{"UPDATE r SET v = v WHERE k = 'k0'"})
	if err != nil || code != 200 {
		return false
	}
	q := url.Values{"level": {n.level}, "q": {"SELECT v FROM r WHERE k = 'k0'"}}
	resp, err := c.http.Get(leader.url() + "/db/query?" + q.Encode())
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
