// Package api holds lattice's external API.
//
// Layout:
//
//   - lattice/v1 is the wire contract: lattice.proto (the API reference; every
//     field is documented there) and the code generated from it,
//     lattice.pb.go (messages) and lattice_grpc.pb.go (the Records and
//     Cluster gRPC services). Import it as
//     latticev1 "github.com/lattice-sync/lattice/api/lattice/v1".
//     Changes must stay wire-compatible: never renumber or reuse a field
//     number or change a field's type; add new fields instead.
//   - server (a later step) will hold the gRPC handlers that implement
//     latticev1.RecordsServer and latticev1.ClusterServer on top of the crdt
//     and storage packages.
//
// Never edit the generated *.pb.go files by hand. After changing the proto,
// run generate.sh (make generate) to regenerate them; verify-generate.sh
// fails when the committed generated code is stale.
package api
