package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

func (cf *clientFlags) check() error {
	if cf.output != "table" && cf.output != "json" {
		return fmt.Errorf("--output %q: want table or json", cf.output)
	}
	return nil
}

// dial connects to the node at --addr.
func (cf *clientFlags) dial() (*grpc.ClientConn, error) {
	if err := cf.check(); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cf.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cf.addr, err)
	}
	return conn, nil
}

// explain turns a gRPC error into a message that says what to do.
func (cf *clientFlags) explain(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("no lattice node answers at %s: start one with 'make run' or 'lattice agent', or pass --addr (%s)", cf.addr, st.Message())
	case codes.InvalidArgument:
		msg := st.Message()
		if strings.Contains(msg, "got a string value") {
			msg += "\nhint: give typed values as field:TYPE=value, e.g. age:int=42, active:bool=true, price:decimal=9.99"
		}
		return fmt.Errorf("invalid request: %s", msg)
	case codes.NotFound:
		return fmt.Errorf("not found: %s", st.Message())
	case codes.FailedPrecondition:
		return fmt.Errorf("refused: %s", st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("timed out after %s: %s", cf.timeout, st.Message())
	}
	return fmt.Errorf("%s: %s", strings.ToLower(st.Code().String()), st.Message())
}

func (cf *clientFlags) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, cf.timeout)
}

// withRecords dials, runs fn with a Records client and explains errors.
func (cf *clientFlags) withRecords(cmd *cobra.Command, fn func(ctx context.Context, c pb.RecordsClient) error) error {
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := cf.ctx(cmd.Context())
	defer cancel()
	if err := fn(ctx, pb.NewRecordsClient(conn)); err != nil {
		return cf.explain(err)
	}
	return nil
}

// parseAssignment parses "field=value" (a string) or "field:TYPE=value".
func parseAssignment(arg string) (string, *pb.Value, error) {
	lhs, raw, ok := strings.Cut(arg, "=")
	if !ok || lhs == "" {
		return "", nil, fmt.Errorf("%q: want field=value or field:TYPE=value", arg)
	}
	name, typ, typed := strings.Cut(lhs, ":")
	if !typed {
		return name, &pb.Value{Kind: &pb.Value_StringValue{StringValue: raw}}, nil
	}
	bad := func(err error) (string, *pb.Value, error) {
		return "", nil, fmt.Errorf("%q: not a valid %s: %v", arg, typ, err)
	}
	switch typ {
	case "string":
		return name, &pb.Value{Kind: &pb.Value_StringValue{StringValue: raw}}, nil
	case "int":
		i, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return bad(err)
		}
		return name, &pb.Value{Kind: &pb.Value_IntValue{IntValue: i}}, nil
	case "float":
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return bad(err)
		}
		return name, &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: f}}, nil
	case "bool":
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return bad(err)
		}
		return name, &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: b}}, nil
	case "timestamp":
		t, err := time.Parse(time.RFC3339Nano, raw)
		if err != nil {
			return bad(err)
		}
		return name, &pb.Value{Kind: &pb.Value_TimestampValue{TimestampValue: timestamppb.New(t)}}, nil
	case "decimal":
		return name, &pb.Value{Kind: &pb.Value_DecimalValue{DecimalValue: raw}}, nil
	case "json":
		if !json.Valid([]byte(raw)) {
			return bad(errors.New("invalid JSON"))
		}
		return name, &pb.Value{Kind: &pb.Value_JsonValue{JsonValue: raw}}, nil
	case "bytes":
		b, err := base64.StdEncoding.DecodeString(raw)
		if err != nil {
			return bad(err)
		}
		return name, &pb.Value{Kind: &pb.Value_BytesValue{BytesValue: b}}, nil
	case "null":
		return name, &pb.Value{Kind: &pb.Value_Null{Null: structpb.NullValue_NULL_VALUE}}, nil
	}
	return "", nil, fmt.Errorf("%q: unknown type %q (want string, int, float, bool, timestamp, decimal, json, bytes or null)", arg, typ)
}

type writeFlags struct {
	context string
	origin  string
	acks    uint32
}

func (w *writeFlags) add(cmd *cobra.Command, acks bool) {
	cmd.Flags().StringVar(&w.context, "context", "", "context token from an earlier read: the write supersedes exactly what that read saw")
	cmd.Flags().StringVar(&w.origin, "origin", "", "origin to record for the edit (default \"api\")")
	if acks {
		cmd.Flags().Uint32Var(&w.acks, "acks", 0, "write concern: nodes (this one included) that must hold the edit durably before the reply")
	}
}

func newPutCmd(cf *clientFlags) *cobra.Command {
	w := &writeFlags{}
	cmd := &cobra.Command{
		Use:   "put ENTITY ID FIELD=VALUE...",
		Short: "write fields of a record",
		Long: `Writes fields of a record, creating it if needed; fields not named keep their value.
Values are strings unless typed: field:TYPE=value with TYPE one of int, float, bool,
timestamp (RFC 3339), decimal, json, bytes (base64), string or null (e.g. phone:null=).`,
		Example: `  lattice put contact c1 name=Ann email=ann@example.com
  lattice put --context TOKEN contact c1 name=Bob`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.PutRequest{Entity: args[0], Id: args[1], Fields: map[string]*pb.Value{},
				Context: w.context, Origin: w.origin, Acks: w.acks}
			for _, a := range args[2:] {
				name, v, err := parseAssignment(a)
				if err != nil {
					return err
				}
				if _, dup := req.Fields[name]; dup {
					return fmt.Errorf("field %q is given twice", name)
				}
				req.Fields[name] = v
			}
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				resp, err := c.Put(ctx, req)
				if err != nil {
					return err
				}
				return printWrite(cmd.OutOrStdout(), cf.output, resp)
			})
		},
	}
	w.add(cmd, true)
	return cmd
}

func newDeleteCmd(cf *clientFlags) *cobra.Command {
	w := &writeFlags{}
	cmd := &cobra.Command{
		Use:   "delete ENTITY ID",
		Short: "delete a record (an edit that saw the delete revives it)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				resp, err := c.Delete(ctx, &pb.DeleteRequest{Entity: args[0], Id: args[1], Context: w.context, Origin: w.origin, Acks: w.acks})
				if err != nil {
					return err
				}
				return printWrite(cmd.OutOrStdout(), cf.output, resp)
			})
		},
	}
	w.add(cmd, true)
	return cmd
}

func newResolveCmd(cf *clientFlags) *cobra.Command {
	w := &writeFlags{}
	cmd := &cobra.Command{
		Use:   "resolve ENTITY ID FIELD [VALUE]",
		Short: "end a conflict on a field, keeping the resolved value or setting VALUE",
		Long: `Writes a version of FIELD that supersedes every live version, so the conflict ends.
Without VALUE the currently resolved value is kept. VALUE may be typed as TYPE=value
(e.g. int=42). With --context, the resolve fails if a new version arrived after that read.`,
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.ResolveRequest{Entity: args[0], Id: args[1], Field: args[2], Context: w.context, Origin: w.origin}
			if len(args) == 4 {
				arg := args[2] + "=" + args[3]
				if typ, raw, ok := strings.Cut(args[3], "="); ok && !strings.ContainsAny(typ, " ") && isTypeName(typ) {
					arg = args[2] + ":" + typ + "=" + raw
				}
				_, v, err := parseAssignment(arg)
				if err != nil {
					return err
				}
				req.Value = v
			}
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				resp, err := c.Resolve(ctx, req)
				if err != nil {
					return err
				}
				return printWrite(cmd.OutOrStdout(), cf.output, resp)
			})
		},
	}
	w.add(cmd, false)
	return cmd
}

func isTypeName(s string) bool {
	switch s {
	case "string", "int", "float", "bool", "timestamp", "decimal", "json", "bytes", "null":
		return true
	}
	return false
}

func newGetCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get ENTITY ID...",
		Short: "read records: resolved values, conflicts, live versions and the context token",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				if len(args) == 2 {
					rec, err := c.Get(ctx, &pb.GetRequest{Entity: args[0], Id: args[1]})
					if err != nil {
						return err
					}
					return printRecord(cmd.OutOrStdout(), cf.output, rec)
				}
				resp, err := c.BatchGet(ctx, &pb.BatchGetRequest{Entity: args[0], Ids: args[1:]})
				if err != nil {
					return err
				}
				if cf.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				for i, rec := range resp.Records {
					if i > 0 {
						fmt.Fprintln(cmd.OutOrStdout())
					}
					if err := printRecord(cmd.OutOrStdout(), cf.output, rec); err != nil {
						return err
					}
				}
				if len(resp.Missing) > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "\nnot found: %s\n", strings.Join(resp.Missing, ", "))
				}
				return nil
			})
		},
	}
}

func newListCmd(cf *clientFlags) *cobra.Command {
	var limit int
	var deleted bool
	cmd := &cobra.Command{
		Use:   "list ENTITY",
		Short: "list the records of an entity in id order",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				var all []*pb.Record
				token := ""
				for limit <= 0 || len(all) < limit {
					size := 500
					if limit > 0 && limit-len(all) < size {
						size = limit - len(all)
					}
					resp, err := c.List(ctx, &pb.ListRequest{Entity: args[0], PageSize: int32(size), PageToken: token, IncludeDeleted: deleted})
					if err != nil {
						return err
					}
					all = append(all, resp.Records...)
					if token = resp.NextPageToken; token == "" {
						break
					}
				}
				return printList(cmd.OutOrStdout(), cf.output, all)
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many records (0: all)")
	cmd.Flags().BoolVar(&deleted, "deleted", false, "include deleted records")
	return cmd
}

func newHistoryCmd(cf *clientFlags) *cobra.Command {
	var limit int32
	cmd := &cobra.Command{
		Use:   "history ENTITY ID FIELD",
		Short: "every version of a field, newest first, with its fate: won, superseded, lost (and to which edit)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withRecords(cmd, func(ctx context.Context, c pb.RecordsClient) error {
				resp, err := c.History(ctx, &pb.HistoryRequest{Entity: args[0], Id: args[1], Field: args[2], Limit: limit})
				if err != nil {
					return err
				}
				return printHistory(cmd.OutOrStdout(), cf.output, resp)
			})
		},
	}
	cmd.Flags().Int32Var(&limit, "limit", 0, "show at most this many versions (0: all)")
	return cmd
}

// watchEnded reports whether a watch stream's error is its own context
// ending (Ctrl-C, or the caller's deadline), which is a clean stop. gRPC can
// report the deadline a moment before ctx.Err() is set: the server's timer
// for the same deadline may cancel the stream first, and the client then
// sees the cancel with the deadline already past.
func watchEnded(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() != nil {
		return true
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
		d, ok := ctx.Deadline()
		return ok && !time.Now().Before(d)
	}
	return false
}

func newWatchCmd(cf *clientFlags) *cobra.Command {
	var cursor string
	var fromStart bool
	cmd := &cobra.Command{
		Use:   "watch [ENTITY]",
		Short: "stream records as they change (Ctrl-C stops; resume with --cursor)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := cf.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			req := &pb.WatchRequest{Cursor: cursor, FromStart: fromStart}
			if len(args) == 1 {
				req.Entity = args[0]
			}
			stream, err := pb.NewRecordsClient(conn).Watch(cmd.Context(), req)
			if err != nil {
				return cf.explain(err)
			}
			out := cmd.OutOrStdout()
			for {
				ev, err := stream.Recv()
				if errors.Is(err, io.EOF) || watchEnded(cmd.Context(), err) {
					return nil
				}
				if err != nil {
					return cf.explain(err)
				}
				if err := printEvent(out, cf.output, ev); err != nil {
					return err
				}
			}
		},
	}
	cmd.Flags().StringVar(&cursor, "cursor", "", "resume after this cursor (from an earlier event)")
	cmd.Flags().BoolVar(&fromStart, "from-start", false, "replay every change this node's op log holds first")
	return cmd
}
