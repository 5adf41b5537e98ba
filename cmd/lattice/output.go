package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

// printJSON prints m as indented JSON. protojson varies its whitespace on
// purpose; re-indenting with encoding/json gives scripts stable output.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := stableJSON(m, "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func stableJSON(m proto.Message, indent string) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if indent == "" {
		err = json.Compact(&buf, raw)
	} else {
		err = json.Indent(&buf, raw, "", indent)
	}
	return buf.Bytes(), err
}

// valueText renders a value for tables: strings bare, null as "null".
func valueText(v *pb.Value) string {
	switch k := v.GetKind().(type) {
	case *pb.Value_StringValue:
		return k.StringValue
	case *pb.Value_IntValue:
		return fmt.Sprint(k.IntValue)
	case *pb.Value_FloatValue:
		return fmt.Sprint(k.FloatValue)
	case *pb.Value_BoolValue:
		return fmt.Sprint(k.BoolValue)
	case *pb.Value_TimestampValue:
		return k.TimestampValue.AsTime().UTC().Format(time.RFC3339Nano)
	case *pb.Value_DecimalValue:
		return k.DecimalValue
	case *pb.Value_JsonValue:
		return k.JsonValue
	case *pb.Value_BytesValue:
		return "base64:" + base64.StdEncoding.EncodeToString(k.BytesValue)
	}
	return "null"
}

func dotText(d *pb.Dot) string {
	if d == nil {
		return ""
	}
	return fmt.Sprintf("%s:%d", d.GetNode(), d.GetSeq())
}

func hlcTime(hlc uint64) string {
	ms := int64(hlc >> 16)
	return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05.000")
}

func printRecord(w io.Writer, format string, rec *pb.Record) error {
	if format == "json" {
		return printJSON(w, rec)
	}
	state := ""
	if rec.GetDeleted() {
		state = "  (deleted)"
	}
	fmt.Fprintf(w, "%s %s%s\n", rec.GetEntity(), rec.GetId(), state)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIELD\tVALUE\tWRITTEN BY\tAT (UTC)\tCONFLICT")
	for _, f := range rec.GetFields() {
		if len(f.GetLive()) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\n", f.GetName(), "-")
			continue
		}
		win := f.GetLive()[0] // the server lists the picked version first
		conflict := ""
		if f.GetConflicted() {
			var parts []string
			for _, v := range f.GetLive() {
				parts = append(parts, fmt.Sprintf("%s (%s %s)", valueText(v.GetValue()), v.GetOrigin(), dotText(v.GetDot())))
			}
			conflict = fmt.Sprintf("yes, %d concurrent: %s", len(f.GetLive()), strings.Join(parts, " | "))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s\n", f.GetName(), valueText(f.GetValue()), win.GetOrigin(), dotText(win.GetDot()), hlcTime(win.GetHlc()), conflict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "context: %s\n", rec.GetContext())
	return err
}

func printWrite(w io.Writer, format string, resp *pb.PutResponse) error {
	if format == "json" {
		return printJSON(w, resp)
	}
	fmt.Fprintf(w, "ok: edit %s at %s UTC\n\n", dotText(resp.GetDot()), hlcTime(resp.GetHlc()))
	return printRecord(w, format, resp.GetRecord())
}

func printList(w io.Writer, format string, recs []*pb.Record) error {
	if format == "json" {
		return printJSON(w, &pb.ListResponse{Records: recs})
	}
	if len(recs) == 0 {
		_, err := fmt.Fprintln(w, "no records")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hdr := []string{"ID"}
	for _, f := range recs[0].GetFields() {
		hdr = append(hdr, strings.ToUpper(f.GetName()))
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\tSTATE")
	for _, r := range recs {
		row := []string{r.GetId()}
		stateNotes := []string{}
		for _, f := range r.GetFields() {
			v := valueText(f.GetValue())
			if len(f.GetLive()) == 0 {
				v = "-"
			}
			if f.GetConflicted() {
				v += "*"
				stateNotes = append(stateNotes, f.GetName()+" in conflict")
			}
			row = append(row, v)
		}
		if r.GetDeleted() {
			stateNotes = append([]string{"deleted"}, stateNotes...)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t"+strings.Join(stateNotes, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d records\n", len(recs))
	return err
}

func fateText(e *pb.HistoryEntry) string {
	switch e.GetFate() {
	case pb.Fate_FATE_WON:
		return "won (current value)"
	case pb.Fate_FATE_SUPERSEDED:
		return "superseded by " + dotText(e.GetBy()) + " (a later edit that saw it)"
	case pb.Fate_FATE_LOST:
		return "lost to " + dotText(e.GetBy()) + " (a concurrent edit)"
	case pb.Fate_FATE_SIBLING:
		return "kept as sibling of " + dotText(e.GetBy()) + " (conflict open)"
	}
	return "?"
}

func printHistory(w io.Writer, format string, resp *pb.HistoryResponse) error {
	if format == "json" {
		return printJSON(w, resp)
	}
	fmt.Fprintf(w, "%s %s %s: %d versions, newest first\n", resp.GetEntity(), resp.GetId(), resp.GetField(), len(resp.GetEntries()))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT (UTC)\tVALUE\tORIGIN\tEDIT\tSAW\tFATE")
	for _, e := range resp.GetEntries() {
		v := e.GetVersion()
		saw := []string{}
		for n, s := range v.GetContext().GetEntries() {
			saw = append(saw, fmt.Sprintf("%s:%d", n, s))
		}
		sort.Strings(saw)
		edit := dotText(v.GetDot())
		if also := v.GetAlso(); len(also) > 0 {
			// One source change captured more than once (a connector's
			// owner changed): one edit, all its dots.
			ds := make([]string, len(also))
			for i, d := range also {
				ds[i] = dotText(d)
			}
			edit += " (also " + strings.Join(ds, " ") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t{%s}\t%s\n", hlcTime(v.GetHlc()), valueText(v.GetValue()), v.GetOrigin(), edit, strings.Join(saw, " "), fateText(e))
	}
	return tw.Flush()
}

func printEvent(w io.Writer, format string, ev *pb.WatchEvent) error {
	if format == "json" {
		b, err := stableJSON(ev, "")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	r := ev.GetRecord()
	parts := []string{}
	for _, f := range r.GetFields() {
		if len(f.GetLive()) == 0 {
			continue
		}
		s := f.GetName() + "=" + valueText(f.GetValue())
		if f.GetConflicted() {
			s += " (conflict)"
		}
		parts = append(parts, s)
	}
	state := ""
	if r.GetDeleted() {
		state = " deleted"
	}
	_, err := fmt.Fprintf(w, "%s %s %s%s %s\n", hlcTime(r.GetUpdatedHlc()), r.GetEntity(), r.GetId(), state, strings.Join(parts, " "))
	return err
}

// durText renders a lag for tables: milliseconds below a second, then
// seconds with one decimal, then whole seconds past a minute.
func durText(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// agoText renders how long ago a time was ("" for an unset time).
func agoText(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	d := time.Since(t.AsTime())
	if d < time.Second {
		return "just now"
	}
	return d.Round(time.Second).String() + " ago"
}

func timeText(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format("2006-01-02 15:04:05") + " UTC (" + agoText(t) + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// connectorState is a status's state, saying why when the owner was not asked.
func connectorState(cs *pb.ConnectorStatus) string {
	if cs.GetOwnerUnreachable() {
		return cs.GetState() + " (owner unreachable)"
	}
	return cs.GetState()
}

// connectorError is the error an operator should see first: why the owner
// could not be asked, else the connector's last error, else the one that
// ended its last attempt; with how long ago.
func connectorError(cs *pb.ConnectorStatus) string {
	rt := cs.GetRuntime()
	switch {
	case cs.GetOwnerUnreachable():
		return cs.GetOwnerError()
	case cs.GetPlacement().GetPaused() && cs.GetPlacement().GetPauseReason() != "":
		return "paused: " + cs.GetPlacement().GetPauseReason()
	case rt.GetReport().GetLastError() != "":
		return rt.GetReport().GetLastError() + " (" + agoText(rt.GetReport().GetLastErrorAt()) + ")"
	case rt.GetLastExitError() != "":
		return rt.GetLastExitError() + " (" + agoText(rt.GetLastExitAt()) + ")"
	}
	return ""
}

func lagText(seconds float64, at *timestamppb.Timestamp) string {
	if at == nil {
		return "-"
	}
	return durText(seconds)
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// printConnectorTable prints one row per connector.
func printConnectorTable(w io.Writer, list []*pb.ConnectorStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tOWNER\tEPOCH\tSTATE\tCAPTURE LAG\tPROJECTION LAG\tSOURCE POSITION\tDEAD LETTERS\tLAST ERROR")
	for _, cs := range list {
		p, rep := cs.GetPlacement(), cs.GetRuntime().GetReport()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", p.GetName(), p.GetKind(), orDash(p.GetNode()), p.GetEpoch(),
			connectorState(cs), lagText(rep.GetCaptureLagSeconds(), rep.GetLastCapture()),
			lagText(rep.GetProjectionLagSeconds(), rep.GetLastProjection()), orDash(rep.GetSourcePosition()),
			p.GetDeadLetters(), orDash(shorten(connectorError(cs), 80)))
	}
	return tw.Flush()
}

// printConnectorDetail prints everything known of one connector, one
// key per line.
func printConnectorDetail(w io.Writer, answeredBy string, cs *pb.ConnectorStatus) error {
	p, rt := cs.GetPlacement(), cs.GetRuntime()
	rep := rt.GetReport()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("connector", p.GetName())
	row("kind", p.GetKind())
	row("owner", orDash(p.GetNode()))
	row("epoch", fmt.Sprint(p.GetEpoch()))
	row("state", connectorState(cs))
	if cs.GetOwnerUnreachable() {
		row("owner error", cs.GetOwnerError())
	}
	switch {
	case p.GetPaused() && p.GetPauseReason() != "":
		row("paused", "yes, by the connector: "+p.GetPauseReason())
	case p.GetPaused():
		row("paused", "yes (lattice connectors resume "+p.GetName()+")")
	default:
		row("paused", "no")
	}
	row("checkpoint", orDash(p.GetCheckpoint()))
	if rt != nil {
		row("owner since", timeText(rt.GetSince()))
		row("attempts", fmt.Sprintf("%d under this epoch, %d restarts on %s", rt.GetAttempts(), rt.GetRestarts(), rt.GetNode()))
		if rt.GetLastExitError() != "" {
			row("last exit error", rt.GetLastExitError()+" ("+agoText(rt.GetLastExitAt())+")")
		}
		if rt.GetNextRetry() != nil {
			row("next retry", timeText(rt.GetNextRetry()))
		}
	}
	if rep != nil {
		row("mode", rep.GetMode())
		row("source position", orDash(rep.GetSourcePosition())+" (confirmed to the source)")
		row("received position", orDash(rep.GetReceivedPosition()))
		if rep.GetProjectionCursor() != nil {
			row("projection cursor", vvText(rep.GetProjectionCursor()))
		} else {
			row("projection cursor", "-")
		}
		measured := func(seconds float64, at *timestamppb.Timestamp) string {
			if at == nil {
				return "- (nothing measured yet)"
			}
			return durText(seconds) + " (measured " + agoText(at) + ")"
		}
		row("capture lag", measured(rep.GetCaptureLagSeconds(), rep.GetLastCapture()))
		row("projection lag", measured(rep.GetProjectionLagSeconds(), rep.GetLastProjection()))
		row("captured edits", fmt.Sprint(rep.GetCapturedEdits()))
		row("projected records", fmt.Sprint(rep.GetProjectedRecords()))
		row("dead letters", fmt.Sprintf("%d in the queue, %d sent since start (lattice connectors dlq list %s)", p.GetDeadLetters(), rep.GetDeadLettersSent(), p.GetName()))
		for _, l := range rep.GetRateLimits() {
			row("rate limit "+l.GetPool(), rateLimitText(l))
		}
		if rep.GetLastError() != "" {
			row("last error", rep.GetLastError()+" ("+agoText(rep.GetLastErrorAt())+")")
		} else {
			row("last error", "-")
		}
		row("started at", timeText(rep.GetStartedAt()))
	} else {
		row("dead letters", fmt.Sprintf("%d in the queue", p.GetDeadLetters()))
	}
	row("answered by", answeredBy)
	return tw.Flush()
}

// rateLimitText describes a rate-limit pool on one line.
func rateLimitText(l *pb.RateLimitPool) string {
	return fmt.Sprintf("%s rows/s (burst %d): now %.1f rows/s, budget %.0f rows, %d rows and %s waiting since start",
		strconv.FormatFloat(l.GetLimitPerSecond(), 'f', -1, 64), l.GetBurst(), l.GetRatePerSecond(), l.GetTokens(), l.GetRows(),
		durText(l.GetWaitedSeconds()))
}
