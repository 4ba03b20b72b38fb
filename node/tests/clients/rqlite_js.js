// Everyday rqlite-js paths against the hosts given as arguments: DataApiClient writes,
// parameterised writes, queries, transactions, consistency levels and raw answers; the status
// and backup clients. Prints "ok <check>" per check; exits 1 on the first failure.
'use strict'
const { DataApiClient, StatusApiClient, BackupApiClient } = require('rqlite-js')

const hosts = process.argv.slice(2)

function ok (name, cond, detail) {
  if (!cond) {
    console.log(`FAIL ${name}: ${detail === undefined ? '' : JSON.stringify(detail)}`)
    process.exit(1)
  }
  console.log(`ok ${name}`)
}

async function main () {
  const data = new DataApiClient(hosts)
  let r = await data.execute('CREATE TABLE foo (id integer not null primary key, name text, score real)')
  ok('create table', !r.hasError(), r.getFirstError())

  r = await data.execute([["INSERT INTO foo(name, score) VALUES(?, ?)", 'fiona', 2.5]])
  ok('parameterised insert', !r.hasError() && r.get(0).getLastInsertId() === 1, r.toArray())

  r = await data.execute(['INSERT INTO foo(name) VALUES("declan")', 'INSERT INTO foo(name) VALUES("alice")'])
  ok('multi-statement insert', !r.hasError() && r.get(1).getLastInsertId() === 3, r.toArray())

  r = await data.query('SELECT id, name, score FROM foo ORDER BY id')
  ok('query', !r.hasError() && r.toArray().length === 3, r.toArray())
  ok('row values', r.get(0).get('name') === 'fiona' && r.get(0).get('score') === 2.5, r.get(0).toObject())

  r = await data.execute('UPDATE foo SET name = "justin" WHERE name = "fiona"')
  ok('update', !r.hasError() && r.get(0).getRowsAffected() === 1, r.toArray())

  r = await data.execute(['INSERT INTO foo(name) VALUES("in-tx")', 'INSERT INTO nosuch(name) VALUES("x")'], { transaction: true })
  ok('failed transaction reports an error', r.hasError(), r.toArray())
  r = await data.query('SELECT COUNT(*) AS n FROM foo WHERE name = "in-tx"')
  ok('failed transaction rolled back', r.get(0).get('n') === 0, r.toArray())

  for (const level of ['none', 'weak', 'strong']) {
    r = await data.query('SELECT COUNT(*) AS n FROM foo', { level })
    ok(`query at level ${level}`, !r.hasError() && r.get(0).get('n') === 3, r.toArray())
  }

  r = await data.query(['SELECT name FROM foo WHERE id = 1', 'SELECT COUNT(*) AS n FROM foo'])
  ok('multiple queries', !r.hasError() && r.get(1).get('n') === 3, r.toArray())

  r = await data.query('SELECT * FROM nosuch')
  ok('query error', r.hasError(), r.toArray())

  const raw = await data.query('SELECT 1', { raw: true })
  const body = typeof raw.body === 'string' ? JSON.parse(raw.body) : raw.body
  ok('raw answer', raw.status === 200 && body.results.length === 1, raw.body)

  const status = new StatusApiClient(hosts)
  const s = await status.status()
  ok('status', s.status === 200 && s.body.store !== undefined, s.status)

  const backup = new BackupApiClient(hosts)
  const stream = await backup.backup('sql')
  const chunks = []
  for await (const c of stream) chunks.push(c)
  const dump = Buffer.concat(chunks).toString()
  ok('sql backup', dump.includes('CREATE TABLE foo') && dump.includes('declan'), dump.slice(0, 200))

  console.log('all rqlite-js checks passed')
}

main().catch((e) => {
  console.log(`FAIL exception: ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
