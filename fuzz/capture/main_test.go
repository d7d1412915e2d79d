package main

import "testing"

// The capture names the opcode of each op; request.go must still have
// them all, each its own value, or the parser targets' entries would
// feed one operation's reply to another.
func TestParserOpsResolve(t *testing.T) {
	got, err := parserOps("../..")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint8]string{}
	for i, b := range got {
		if other, dup := seen[b]; dup {
			t.Errorf("%s and %s both resolve to op byte %d", ops[i].parserOp, other, b)
		}
		seen[b] = ops[i].parserOp
	}
}
