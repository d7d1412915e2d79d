package main

import (
	"errors"
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"strings"
)

// opcodes reads the values of ermc's opcode constants (opGet, opIncr, ...)
// from the package's source in dir. The parser targets take an opcode as
// their op byte, and opcodes are unexported and numbered by position
// (iota): reading them by name keeps the captured entries right when a
// constant is inserted, where numbers written here would silently shift.
func opcodes(dir string) (map[string]uint8, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	// Only the constants matter: imports are left unresolved and the
	// errors that follow from that are ignored.
	conf := types.Config{
		Importer: noImports{},
		Error:    func(error) {},
	}
	pkg, _ := conf.Check("ermc", fset, files, nil)
	ops := map[string]uint8{}
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok {
			continue
		}
		if named, ok := c.Type().(*types.Named); !ok || named.Obj().Name() != "opcode" {
			continue
		}
		v, exact := constant.Uint64Val(c.Val())
		if !exact || v > 255 {
			return nil, fmt.Errorf("%s = %v is not an op byte", name, c.Val())
		}
		ops[name] = uint8(v)
	}
	if len(ops) == 0 {
		return nil, fmt.Errorf("no opcode constants in %s: run from the repository root or pass -src", dir)
	}
	return ops, nil
}

type noImports struct{}

func (noImports) Import(path string) (*types.Package, error) {
	return nil, errors.New("not needed")
}
