package postgres

import "time"

// WithSchemaCheckEvery sets how often the catalog is compared with the
// mapping (tests: much less than schemaCheckEvery).
func WithSchemaCheckEvery(d time.Duration) Option {
	return func(c *Connector) { c.drift.every = d }
}
