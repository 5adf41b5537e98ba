package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t{%s}\t%s\n", hlcTime(v.GetHlc()), valueText(v.GetValue()), v.GetOrigin(), dotText(v.GetDot()), strings.Join(saw, " "), fateText(e))
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
