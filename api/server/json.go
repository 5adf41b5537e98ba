package server

import "encoding/json"

func jsonValid(s string) bool { return json.Valid([]byte(s)) }
