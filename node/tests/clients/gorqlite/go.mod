module litecluster.test/gorqlite-client

go 1.24

require github.com/rqlite/gorqlite v0.0.0-20261020015727-7224ce2bd419
