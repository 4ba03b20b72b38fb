"""Runs the unchanged PyPI rqlite client `pyrqlite` against a litecluster member.

Usage: python3 pyrqlite_client.py HOST PORT
Exits non-zero (with the failing step) on any mismatch.
"""
import sys

import pyrqlite.dbapi2 as dbapi2

host, port = sys.argv[1], int(sys.argv[2])
conn = dbapi2.connect(host=host, port=port)
cur = conn.cursor()

cur.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL, born DATE, active BOOLEAN, data BLOB)")
cur.execute("INSERT INTO people(name, score) VALUES ('fiona', 20.5)")
assert cur.lastrowid == 1, cur.lastrowid
cur.execute("INSERT INTO people(name, score) VALUES (?, ?)", ("declan", 7))
assert cur.lastrowid == 2, cur.lastrowid
cur.execute("INSERT INTO people(name, score) VALUES (:name, :score)", {"name": "o'brien", "score": 1.25})
cur.execute("INSERT INTO people(name, born, active, data) VALUES (?, ?, ?, ?)", ("dates", "2024-01-02", True, b"\x00\x01bin"))
cur.executemany("INSERT INTO people(name) VALUES (?)", [("m1",), ("m2",), ("m3",)])
assert cur.rowcount == 3, cur.rowcount

cur.execute("SELECT id, name, score FROM people WHERE name = ?", ("fiona",))
row = cur.fetchone()
assert row == (1, "fiona", 20.5), row
assert row["name"] == "fiona"
assert [d[0] for d in cur.description] == ["id", "name", "score"], cur.description

cur.execute("SELECT name FROM people WHERE name = :n", {"n": "o'brien"})
assert cur.fetchall() == [("o'brien",)]

cur.execute("SELECT born, active, data FROM people WHERE name = 'dates'")
born, active, data = cur.fetchone()
assert str(born) == "2024-01-02", born
assert active is True or active == 1, active
assert data == b"\x00\x01bin", data

cur.execute("SELECT count(*) AS n FROM people")
assert cur.fetchone()[0] == 7

cur.execute("UPDATE people SET score = 0 WHERE name LIKE 'm%'")
assert cur.rowcount == 3, cur.rowcount

# A failing statement raises; the table is unchanged.
try:
    cur.execute("INSERT INTO nonexistent VALUES (1)")
    raise AssertionError("expected an error")
except dbapi2.Error as e:
    assert "no such table" in str(e), e

cur.execute("SELECT count(*) FROM people", consistency="strong")
assert cur.fetchone()[0] == 7
cur.execute("SELECT count(*) FROM people", consistency="none")
assert cur.fetchone()[0] == 7
conn.close()
print("pyrqlite: all steps passed")
