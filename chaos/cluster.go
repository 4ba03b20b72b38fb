package main

// The cluster under test: real litecluster-node processes, each in its own network namespace
// on a bridge of private addresses, each with its data on a small tmpfs (so a disk can fill).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	bridge   = "lcchaos0"
	subnet   = "10.78.0"
	hostAddr = subnet + ".1"
)

type member struct {
	id      int
	ns      string
	ip      string
	mount   string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	stopped bool // killed or paused by the nemesis on purpose
	paused  bool
	// restarts counts exits the harness did not cause (the supervisor restarted it).
	restarts int
}

type cluster struct {
	bin     string
	dir     string
	members []*member
	http    *http.Client
	log     func(format string, args ...any)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// teardownNetwork removes what an earlier run (maybe killed) left behind.
func teardownNetwork(n int) {
	for i := 1; i <= n+2; i++ {
		_ = exec.Command("ip", "netns", "del", fmt.Sprintf("lcchaos-%d", i)).Run()
		_ = exec.Command("ip", "link", "del", fmt.Sprintf("lcchv%d", i)).Run()
	}
	_ = exec.Command("ip", "link", "del", bridge).Run()
}

func newCluster(bin, dir string, n int, logf func(string, ...any)) (*cluster, error) {
	teardownNetwork(n)
	steps := [][]string{
		{"ip", "link", "add", bridge, "type", "bridge"},
		{"ip", "addr", "add", hostAddr + "/24", "dev", bridge},
		{"ip", "link", "set", bridge, "up"},
	}
	c := &cluster{bin: bin, dir: dir, http: &http.Client{Timeout: 3 * time.Second}, log: logf}
	for i := 1; i <= n; i++ {
		m := &member{
			id:      i,
			ns:      fmt.Sprintf("lcchaos-%d", i),
			ip:      fmt.Sprintf("%s.%d", subnet, 10+i),
			mount:   filepath.Join(dir, fmt.Sprintf("m%d", i)),
			logPath: filepath.Join(dir, fmt.Sprintf("member-%d.log", i)),
		}
		veth := fmt.Sprintf("lcchv%d", i)
		steps = append(steps,
			[]string{"ip", "netns", "add", m.ns},
			[]string{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", m.ns},
			[]string{"ip", "link", "set", veth, "master", bridge},
			[]string{"ip", "link", "set", veth, "up"},
			[]string{"ip", "netns", "exec", m.ns, "ip", "addr", "add", m.ip + "/24", "dev", "eth0"},
			[]string{"ip", "netns", "exec", m.ns, "ip", "link", "set", "eth0", "up"},
			[]string{"ip", "netns", "exec", m.ns, "ip", "link", "set", "lo", "up"},
		)
		c.members = append(c.members, m)
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	for _, m := range c.members {
		if err := os.MkdirAll(m.mount, 0o755); err != nil {
			return nil, err
		}
		// 256 MiB: room for the test's data and its snapshots, small enough to fill quickly.
		if err := run("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", m.mount); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *cluster) close() {
	for _, m := range c.members {
		m.mu.Lock()
		m.stopped = true
		if m.cmd != nil && m.cmd.Process != nil {
			_ = m.cmd.Process.Signal(syscall.SIGCONT)
			_ = m.cmd.Process.Kill()
		}
		m.mu.Unlock()
		if m.exited != nil {
			<-m.exited
		}
		_ = exec.Command("umount", m.mount).Run()
	}
	teardownNetwork(len(c.members))
}

func (m *member) url() string { return "http://" + m.ip + ":4001" }

// start runs the member; extra flags are for this start only (--bootstrap, --join).
// A process that exits without the nemesis asking is restarted after a second, as a kubelet
// would, so a member that stopped on a full disk comes back once there is space.
func (c *cluster) start(m *member, extra ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", m.ns, c.bin,
		"--node-id", fmt.Sprint(m.id),
		"--data-dir", filepath.Join(m.mount, "data"),
		"--http-addr", m.ip + ":4001",
		"--raft-addr", m.ip + ":4002",
		"--snapshot-threshold", "2000",
	}
	args = append(args, extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout = io.Discard
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), "RUST_LOG=info,openraft=warn", "NO_COLOR=1")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	m.cmd, m.stopped, m.paused = cmd, false, false
	exited := make(chan struct{})
	m.exited = exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(exited)
		m.mu.Lock()
		mine := m.cmd == cmd && !m.stopped
		m.mu.Unlock()
		if mine {
			c.log("member %d exited by itself (%v); restarting it", m.id, err)
			m.mu.Lock()
			m.restarts++
			m.mu.Unlock()
			time.Sleep(time.Second)
			m.mu.Lock()
			again := m.cmd == cmd && !m.stopped
			m.mu.Unlock()
			if again {
				_ = c.start(m)
			}
		}
	}()
	return nil
}

func (c *cluster) kill(m *member) {
	m.mu.Lock()
	m.stopped = true
	cmd, exited := m.cmd, m.exited
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
	}
	m.mu.Unlock()
	if exited != nil {
		<-exited
	}
}

func (c *cluster) signal(m *member, sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil && m.cmd.Process != nil {
		_ = m.cmd.Process.Signal(sig)
		m.paused = sig == syscall.SIGSTOP
	}
}

// status is the part of /status the harness reads.
type status struct {
	Store struct {
		Leader struct {
			NodeID string `json:"node_id"`
		} `json:"leader"`
		Raft struct {
			AppliedIndex uint64 `json:"applied_index"`
			State        string `json:"state"`
		} `json:"raft"`
	} `json:"store"`
}

func (c *cluster) status(m *member) (status, error) {
	var s status
	resp, err := c.http.Get(m.url() + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return s, fmt.Errorf("status %d", resp.StatusCode)
	}
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// leader is the member every reachable member names as leader, if they agree.
func (c *cluster) leader() (*member, bool) {
	var name string
	for _, m := range c.members {
		s, err := c.status(m)
		if err != nil || s.Store.Leader.NodeID == "" {
			return nil, false
		}
		if name != "" && s.Store.Leader.NodeID != name {
			return nil, false
		}
		name = s.Store.Leader.NodeID
	}
	for _, m := range c.members {
		if fmt.Sprint(m.id) == name {
			return m, true
		}
	}
	return nil, false
}

func (c *cluster) ready(m *member) bool {
	resp, err := c.http.Get(m.url() + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func (c *cluster) post(m *member, path string, body any) (int, []byte, error) {
	return c.send(http.MethodPost, m, path, body)
}

func (c *cluster) send(method string, m *member, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, m.url()+path, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// partition drops traffic between each member of a and each of b (both directions, inside
// the namespaces). The host (clients) still reaches everyone.
func (c *cluster) partition(a, b []*member) error {
	for _, x := range a {
		for _, y := range b {
			for _, pair := range [][2]*member{{x, y}, {y, x}} {
				if err := run("ip", "netns", "exec", pair[0].ns, "iptables", "-A", "INPUT", "-s", pair[1].ip, "-j", "DROP"); err != nil {
					return err
				}
				if err := run("ip", "netns", "exec", pair[0].ns, "iptables", "-A", "OUTPUT", "-d", pair[1].ip, "-j", "DROP"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (c *cluster) heal() {
	for _, m := range c.members {
		_ = run("ip", "netns", "exec", m.ns, "iptables", "-F")
	}
}

// fillDisk leaves almost no space on the member's volume.
func (m *member) fillDisk() error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.mount, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	f, err := os.Create(filepath.Join(m.mount, "filler"))
	if err != nil {
		return err
	}
	defer f.Close()
	// The member writes meanwhile: take what is left, in steps, until nothing is.
	for size := free - 4096; size > 0; {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.ENOSPC) {
			_ = os.Remove(f.Name())
			return err
		}
		size -= 1 << 20
	}
	return nil
}

func (m *member) freeDisk() error {
	return os.Remove(filepath.Join(m.mount, "filler"))
}

func (m *member) wipe() error {
	return os.RemoveAll(filepath.Join(m.mount, "data"))
}

// panics returns log lines that show a panic.
func (m *member) panics() []string {
	b, _ := os.ReadFile(m.logPath)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "panicked at") {
			out = append(out, l)
		}
	}
	return out
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
