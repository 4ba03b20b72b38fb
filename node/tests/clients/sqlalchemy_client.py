"""Everyday SQLAlchemy (sqlalchemy-rqlite dialect) paths against the member given as host:port:
Core DDL, inserts, selects with parameters, has_table, and ORM sessions (add, query, update,
delete, a rolled-back session). Prints "ok <check>" per check; exits 1 on the first failure."""
import sys

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, create_engine,
                        inspect, select, text)
from sqlalchemy.orm import DeclarativeBase, Session


def ok(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


host, port = sys.argv[1].rsplit(":", 1)
engine = create_engine(f"rqlite+pyrqlite://{host}:{port}/")

meta = MetaData()
people = Table("people", meta,
               Column("id", Integer, primary_key=True),
               Column("name", String(50), nullable=False),
               Column("score", Float))
meta.create_all(engine)
ok("create_all", True)

with engine.connect() as conn:
    conn.execute(people.insert(), [{"name": "fiona", "score": 2.5}, {"name": "declan", "score": 3.0}])
    conn.commit()
    rows = conn.execute(select(people.c.name, people.c.score).order_by(people.c.id)).all()
    ok("core insert and select", [tuple(r) for r in rows] == [("fiona", 2.5), ("declan", 3.0)], rows)
    n = conn.execute(text("SELECT COUNT(*) FROM people WHERE score > :s"), {"s": 2.7}).scalar()
    ok("text with a parameter", n == 1, n)

# Column reflection (`inspect().get_columns`) fails in the dialect itself, against rqlite too:
# it reports no server version, which SQLAlchemy compares. `has_table` is what create_all uses.
ok("has_table", inspect(engine).has_table("people") and not inspect(engine).has_table("nosuch"))


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id = Column(Integer, primary_key=True)
    label = Column(String(40))
    qty = Column(Integer, default=0)


Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([Item(label="apple", qty=3), Item(label="pear", qty=5)])
    s.commit()
    ok("orm add", s.query(Item).count() == 2)
    pear = s.query(Item).filter_by(label="pear").one()
    ok("orm primary key", pear.id == 2, pear.id)
    pear.qty = 7
    s.commit()
    ok("orm update", s.get(Item, 2).qty == 7)
    s.delete(s.get(Item, 1))
    s.commit()
    ok("orm delete", [i.label for i in s.query(Item).all()] == ["pear"])

with Session(engine) as s:
    s.add(Item(label="never"))
    s.rollback()
    ok("orm rollback before flush", s.query(Item).filter_by(label="never").count() == 0)

print("all sqlalchemy checks passed")
