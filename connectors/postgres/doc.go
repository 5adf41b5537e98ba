// Package postgres is the PostgreSQL connector: capture through logical
// replication (pgoutput) after an initial snapshot taken at the
// replication slot's starting point, and projection of resolved record
// state with INSERT ... ON CONFLICT DO UPDATE / DELETE in a session marked
// with the replication origin lattice_<name>, so capture never reads its
// own writes back; or, with mode: trigger, capture from a change table
// that triggers fill (see "Trigger mode" below); or, with mode: poll,
// capture by polling each table's updated_at column (see "Poll mode"); or,
// with mode: auto, the first of these the database allows (see "Mode
// auto"). connectors/DESIGN.md states
// the delivery and causality contract; what follows documents the
// configuration.
//
// # Configuration
//
// A connector is declared under connectors.<name> (ParseConfig reads it):
//
//	connectors:
//	  crm:
//	    kind: postgres
//	    dsn_env: CRM_DSN                 # or dsn_file; the DSN is never logged
//	    tables:
//	      people:
//	        entity: person
//	        key: [id]                    # the record id; several columns are joined with "/"
//	        columns:
//	          email: email                                  # short form: column: field
//	          active: {field: active, true_values: [Y, 1], false_values: [N, 0]}
//	          joined_on: {field: joined, format: "%d/%m/%Y", timezone: Europe/Paris}
//	          last_seen_ms: {field: seen, format: unix_ms}
//	          balance: {field: balance, type: decimal}
//	          first: {type: string}                         # read by expressions only
//	          last: {type: string}
//	          status: {type: string}
//	        filter: "row.status != 'test'"
//	        computed:
//	          full_name: "row.first + ' ' + row.last"
//	        project_filter: "record.active"
//
// Unknown keys are refused at every level, and every error names the
// connector, the table and the column, field or expression.
//
// Other connector keys: publication and slot (default lattice_<name>),
// capture and project (both true by default), acks (nodes holding
// captured edits before the source may release them, default 2), mode
// (logical, trigger, poll or auto; default logical), replica_identity (full
// or default) and rate_limit (below).
//
// # Rate limits
//
//	connectors:
//	  crm:
//	    rate_limit: {reads: 2000, writes: 1000, burst: 500}
//
// rate_limit bounds, in rows per second, what the connector reads from the
// database (reads: every row change capture takes, lattice's own writes
// excepted, and every row of the initial snapshot) and writes into it
// (writes: every record projection writes). Each is a token bucket; burst
// is how many rows may go at once with a full budget (default: one
// second's worth of each rate; 1 to 1,000,000). Rates are numbers of at
// least 1; leave a pool out for no limit (rate_limit absent: unlimited).
// reads needs capture on, writes needs project on. When the read budget is
// short, capture waits before reading more (the replication slot keeps the
// WAL meanwhile); when the write budget is short, projection waits before
// a batch, and a batch never exceeds the burst. The budget is kept in the
// connector's checkpoint, so a restarted or moved connector starts from
// what was left rather than a full bucket (it may exceed the limit by what
// the previous owner spent after its last checkpoint: about one second's
// worth under load). lattice connectors status NAME shows each pool (limit,
// burst, budget, measured rate, time waited); the metrics are
// lattice_connector_ratelimit_wait_seconds_total,
// lattice_connector_ratelimit_tokens and
// lattice_connector_ratelimit_limit_rows_per_second{connector, pool}.
//
// # Schema changes
//
// The connector needs the key columns, the mapped columns and the columns
// expressions read, with the types they had when it started. Other
// changes of a mapped table (a column added, an unmapped column dropped or
// retyped) are ignored. When a needed column is dropped or changes type,
// or a mapped table disappears, the connector stops before applying any
// change that depends on it and pauses itself (through Raft, in a
// cluster) with a reason naming the table and column and the fix: restore
// the column, or change the mapping with lattice config apply, then
// lattice connectors resume NAME. It sees it in the change stream (logical
// replication's Relation messages), in the catalog at start and every
// 30 s, and when projection is refused for a missing or retyped column
// (which is then not a dead letter). Resumed, it picks up where it paused;
// if a needed column is still missing it pauses again, and a retyped
// column left as it is is taken with its new type. Changes made while the
// column was gone are captured without it (their field is not written).
//
// # Columns and type conversion
//
// A column entry is either the short form `column: field` or a mapping with
// these keys:
//
//   - field: the entity field the column is captured into and projected
//     from. Without it the column is read only by expressions (see below).
//   - type: the type the column's text converts to: string, int, float,
//     bool, timestamp, decimal, json or bytes. A mapped column converts to
//     its field's type, so type may be omitted; when given it must match.
//     For a column read only by expressions it is the type the expressions
//     see (string by default).
//   - format (timestamps): how the column holds the instant. Omitted:
//     PostgreSQL's own text for timestamptz, timestamp and date columns (or
//     RFC 3339). unix, unix_ms, unix_us: an integer number of seconds,
//     milliseconds or microseconds since 1970-01-01 UTC (a bigint or a text
//     column); projection writes the instant rounded down to that unit.
//     rfc3339. A strftime format (it contains %: %Y %y %m %d %e %j %H %I %M
//     %S %f %p %b %B %a %A %z %Z %F %T %%) or a Go layout (the reference time
//     2006-01-02 15:04:05, e.g. "02/01/2006"); it must give year, month and
//     day. Projection writes the instant in the same format, so a format
//     that drops the time of day drops it on the way back too.
//   - timezone (timestamps): an IANA zone (Europe/Paris) for texts without
//     an offset (timestamp without time zone columns, layouts without %z)
//     and for the text projection writes. UTC by default. Not for epochs.
//   - true_values, false_values (booleans): the texts read as true and as
//     false, e.g. [Y, y] and [N, n], or [1] and [0]; both are required and
//     any other text is refused. Projection writes the first of each.
//     Without them a bool column reads t/true/f/false (PostgreSQL's bool).
//
// Texts are compared and parsed after trimming surrounding spaces (a
// char(n) column pads), except for string, json and bytes fields, which
// keep the text as it is. A text column converts to an int, float or
// decimal field by parsing; projection writes the number's text and
// PostgreSQL casts it to the column's type. A value that cannot be
// converted is an error naming the table, the column and the value (cut to
// 64 bytes).
//
// # Expressions
//
// Expressions are CEL (https://cel.dev, google/cel-go) with the strings
// extension (lowerAscii, upperAscii, trim, replace, split, format, ...),
// compiled and type-checked once by ParseConfig. A compile or type error, a
// reference to an undeclared column or field, or a result of the wrong type
// is a configuration error.
//
// Capture expressions (filter, computed) see the row's columns as
// row.<column>: the key columns, the mapped columns and the columns read
// only by expressions. A mapped column has its field's converted value (a
// Y/N column mapped to a bool field is a bool); a key column not listed
// under columns is its text (string); a column read only by expressions is
// converted to its type. The projection filter sees the record's resolved
// fields as record.<field>. In both, CEL types are: string, int, double
// (float), bool, timestamp (google.protobuf.Timestamp: compare with
// timestamp('2024-01-01T00:00:00Z'), getFullYear(), ...), bytes; decimal
// and json values are their text (string: double(row.balance) to compute).
// Columns whose names are not CEL identifiers cannot be used.
//
// Every column and field may be null: row.x == null tests it, and an
// operation on null (null + 'x', null > 3) fails to evaluate. Guard with a
// conditional: row.first == null ? row.last : row.first + ' ' + row.last. A
// computed field gives null with dyn(null): row.born == null ? dyn(null) :
// 2024 - row.born.getFullYear(). has(row.x) does not apply (every declared
// column is always present).
//
// Each evaluation is bounded by a cost of 100,000 (about that many simple
// operations; string operations cost about one per ten bytes, so a few
// scans of a text of a hundred kilobytes fit), so a runaway expression ends in an
// evaluation error for the row (a dead letter) rather than a hung capture.
// The bound is a cost, not a time, so a row's outcome is the same on every
// node and every replay.
//
// # Filters
//
// filter (capture) is a condition over row.<column>. An inserted or updated
// row for which it is false is not captured: nothing is written, and a
// debug log line says so. A row that stops matching is not deleted from
// lattice: its record keeps what was last captured, and its later changes
// are not captured until it matches again; it is then captured with every
// field that differs from what the connector last saw the row hold (its
// last captured change or lattice's last projection into it) (unlike PostgreSQL's
// publication row filters, which turn such an UPDATE into a DELETE).
// Deletes are always captured: the change stream carries only the key of a
// deleted row.
//
// project_filter (projection) is a condition over record.<field>. A record
// whose resolved state fails it is not written into the table: a row
// written earlier keeps what was last written (it is not deleted). A
// deleted record's DELETE is always written.
//
// HAZARD: the two filters are independent. A row that filter excludes can
// still be overwritten by a projection of its record (an edit from another
// system) unless project_filter excludes that record too; filter on a
// mapped column and state the same condition over its field in
// project_filter to keep a table's subset to itself.
//
// # Computed fields
//
// computed maps a field to an expression over row.<column> that gives the
// field's value on capture (after the filter). Its result must fit the
// field: string; int; double or int for float; bool; timestamp; string,
// int or double for decimal; string (valid JSON), map or list for json;
// bytes. A computed field is capture-only: projection writes only the
// columns under columns, so it is never written back into this table (a
// field cannot be both computed and mapped from a column of the same
// table); other connectors whose tables map the field do project it. Like
// any captured field it is written only when its value changed.
//
// # Poll mode
//
// mode: poll captures without logical replication (any wal_level, no
// replication privilege, slot, publication or replication origin): each
// table is read by queries ordered by its updated_at column and key. Every
// table then needs updated_at (a timestamp or timestamptz column, mapped or
// not; timestamptz is advised) that the database sets on every insert and
// update, e.g. DEFAULT clock_timestamp() and a BEFORE UPDATE trigger
// setting NEW.updated_at = clock_timestamp(), and an index on
// (updated_at, key). A table's poll mapping tunes it:
//
//	customers:
//	  entity: contact
//	  key: [customer_id]
//	  updated_at: updated_at
//	  columns: {full_name: name, email_address: email}
//	  poll:
//	    interval: 1s          # between two scans (default 1s)
//	    overlap: 5s           # re-read window (default 5s)
//	    page_size: 1000       # rows per query (default 1000)
//	    soft_delete: {column: deleted, value: true}
//	    keyset_every: 60      # a key-set pass every 60 scans
//
// The settings:
//
//   - interval: a Go duration (1s, 250ms); how often the table is scanned.
//     Capture latency is about half of it on average, plus the query.
//   - overlap: how far before the previous scan's start each scan re-reads.
//     It must exceed the longest transaction writing the table: a row is
//     stamped when written and visible when committed, and a row committed
//     later than the overlap after its stamp is missed. Rows re-read with
//     what the connector last saw of them are no change.
//   - page_size: rows per query; pages follow (updated_at, key) strictly,
//     so rows sharing one updated_at are all read whatever the size.
//   - soft_delete: column (required) and value (its text, col::text:
//     booleans are true and false; omitted: any non-null value, as for a
//     deleted_at column). A row marked so is a delete of its record; a row
//     no longer marked is captured again whole. Projection does not write
//     the column: a deleted record's row is deleted.
//   - keyset_every: N compares, every N scans, the table's keys with the
//     records lattice holds from it; a key gone is a delete. It reads every
//     key of the table. Without it (and without soft_delete), deleting a
//     row is not captured.
//
// The first scan reads every row (the initial snapshot); later scans read
// from the previous scan's start minus the overlap. The position (per
// table, the scan's lower bound and its (updated_at, key) cursor) is
// checkpointed like an LSN, so a restart or a move resumes where capture
// was. Lattice's projections are read back inside their transaction, so
// polling never captures them again, and a native change stamped after a
// projection into its row supersedes it (one stamped before is a
// conflict). Projection leaves a row that changed since it was last polled
// for the next poll (which comes at once) instead of writing over it.
// Every poll edit is dated by the row's updated_at. HAZARDs (clocks, long
// transactions, writes that do not set updated_at): connectors/DESIGN.md,
// "Poll mode".
//
// # Trigger mode
//
// mode: trigger captures without logical replication (any wal_level, no
// replication privilege, slot, publication or replication origin). Its
// objects, per connector: schema lattice, a change table
// lattice.changes_<name>, a trigger function lattice.capture_<name>() and,
// on every mapped table, an AFTER INSERT OR UPDATE OR DELETE row trigger
// lattice_capture_<name> that writes the old and new row (jsonb) into the
// change table and notifies channel lattice_<name>. The connector installs
// what is missing at start when its role may (CREATE on the database,
// TRIGGER on the tables); otherwise `lattice connectors trigger install
// NAME --config FILE`, run by a role that owns the tables, does (it prints
// the SQL first; --dry-run only prints; remove drops everything). Every
// mapped table needs a primary key or unique index on its key columns (the
// order of a row's changes rests on the lock its key takes). Captured rows
// are deleted from the change table once a checkpoint covers them; objects
// found missing at start (or while running) are installed again and
// capture starts over from a snapshot. TRUNCATE is not captured. Details:
// connectors/DESIGN.md, "Trigger mode".
//
// # Mode auto
//
// mode: auto picks, when the connector starts, logical if wal_level is
// logical and the role may replicate (and may set a replication origin, and
// has or may create the publication), else trigger if its objects are
// installed or the role may install them, else poll if every table has
// updated_at (poll settings are optional: defaults apply). The choice and
// why the other modes were passed over are logged and shown as the mode of
// `lattice connectors status`. A connector keeps the mode its checkpoint
// was written in while the database still allows it. When no mode fits,
// the error names each reason.
//
// # Errors and the dead-letter queue
//
// Nothing is dropped silently. A captured row that cannot be mapped (a
// value that does not convert, a null key column, a filter or computed
// expression that fails to evaluate) is refused: it becomes a dead letter
// (direction capture) naming the table, the column or expression and the
// cause, from the initial snapshot and from the stream alike; the rest of
// its transaction is captured. Replaying the letter reads the row again
// from the table. A project_filter that fails to evaluate sends the record
// to the dead-letter queue (direction project); replaying it projects the
// record again. A row refused while the stream left out an unchanged
// TOASTed column that an expression needs (the connector uses the value it
// last saw when it knows it) is also a dead letter; replay reads the whole
// row.
package postgres
