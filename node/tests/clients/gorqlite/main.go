// Everyday gorqlite paths against the cluster at the URL given as the first argument: writes,
// parameterised writes, queries (Next/Scan/Map), the unified endpoint, transactions, queued
// writes, consistency levels and cluster discovery. Prints "ok <check>" per check; exits 1 on
// the first failure.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/rqlite/gorqlite"
)

func check(name string, err error) {
	if err != nil {
		fmt.Printf("FAIL %s: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Printf("ok %s\n", name)
}

func main() {
	url := os.Args[1]
	conn, err := gorqlite.Open(url)
	check("open", err)
	defer conn.Close()

	_, err = conn.WriteOne("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, score REAL)")
	check("create table", err)

	wr, err := conn.WriteOneParameterized(gorqlite.ParameterizedStatement{
		Query:     "INSERT INTO people(name, age, score) VALUES(?, ?, ?)",
		Arguments: []interface{}{"fiona", 20, 3.5},
	})
	check("parameterised insert", err)
	if wr.RowsAffected != 1 || wr.LastInsertID != 1 {
		check("insert result", fmt.Errorf("rows affected %d, last insert id %d", wr.RowsAffected, wr.LastInsertID))
	}

	results, err := conn.Write([]string{
		"INSERT INTO people(name, age, score) VALUES('declan', 31, 1)",
		"INSERT INTO people(name, age, score) VALUES('alice', 40, 2.25)",
	})
	check("multi-statement write", err)
	if len(results) != 2 || results[1].LastInsertID != 3 {
		check("multi-statement result", fmt.Errorf("%+v", results))
	}

	qr, err := conn.QueryOne("SELECT id, name, age, score FROM people ORDER BY id")
	check("query", err)
	if qr.NumRows() != 3 {
		check("row count", fmt.Errorf("%d rows", qr.NumRows()))
	}
	var names []string
	for qr.Next() {
		var id, age int64
		var name string
		var score float64
		check("scan", qr.Scan(&id, &name, &age, &score))
		names = append(names, name)
	}
	if fmt.Sprint(names) != "[fiona declan alice]" {
		check("scanned names", fmt.Errorf("%v", names))
	}

	qr, err = conn.QueryOneParameterized(gorqlite.ParameterizedStatement{
		Query:     "SELECT name, score FROM people WHERE age > ?",
		Arguments: []interface{}{30},
	})
	check("parameterised query", err)
	qr.Next()
	m, err := qr.Map()
	check("map", err)
	if m["name"] != "declan" {
		check("map values", fmt.Errorf("%v", m))
	}

	rr, err := conn.Request([]string{
		"INSERT INTO people(name, age) VALUES('bob', 50)",
		"SELECT COUNT(*) FROM people",
	})
	check("request", err)
	if len(rr) != 2 || rr[0].Write == nil || rr[1].Query == nil {
		check("request results", fmt.Errorf("%+v", rr))
	}

	check("transactions on", conn.SetExecutionWithTransaction(true))
	_, err = conn.Write([]string{
		"INSERT INTO people(name) VALUES('in-tx')",
		"INSERT INTO nosuch VALUES(1)",
	})
	if err == nil {
		check("failed transaction", fmt.Errorf("no error"))
	}
	check("transactions off", conn.SetExecutionWithTransaction(false))
	qr, err = conn.QueryOne("SELECT COUNT(*) FROM people WHERE name = 'in-tx'")
	check("rolled back", err)
	qr.Next()
	var n int64
	check("scan count", qr.Scan(&n))
	if n != 0 {
		check("rolled back rows", fmt.Errorf("%d rows survived", n))
	}

	seq, err := conn.QueueOne("INSERT INTO people(name) VALUES('queued')")
	check("queued write", err)
	if seq <= 0 {
		check("sequence number", fmt.Errorf("%d", seq))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		qr, err = conn.QueryOne("SELECT COUNT(*) FROM people WHERE name = 'queued'")
		check("query queued", err)
		qr.Next()
		check("scan queued", qr.Scan(&n))
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			check("queued write applied", fmt.Errorf("not applied after 20s"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Println("ok queued write applied")

	for _, level := range []string{"none", "weak", "strong", "linearizable"} {
		lvl, err := gorqlite.ParseConsistencyLevel(level)
		check("parse level "+level, err)
		check("set level "+level, conn.SetConsistencyLevel(lvl))
		_, err = conn.QueryOne("SELECT COUNT(*) FROM people")
		check("query at "+level, err)
	}

	leader, err := conn.Leader()
	check("leader", err)
	if leader == "" {
		check("leader address", fmt.Errorf("empty"))
	}
	peers, err := conn.Peers()
	check("peers", err)
	if len(peers) == 0 {
		check("peer list", fmt.Errorf("empty"))
	}
	fmt.Println("all gorqlite checks passed")
}
