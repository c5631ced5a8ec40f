package models

import (
	"fmt"
	"os"
	"syscall"

	"google.golang.org/protobuf/encoding/protowire"
)

// GraphIO is what an ONNX file declares as its inputs and outputs.
type GraphIO struct {
	Inputs  []TensorSpec
	Outputs []TensorSpec
	Opset   int64 // the default-domain opset
}

// onnxElemTypes maps TensorProto.DataType to the manifest's type names.
var onnxElemTypes = map[uint64]string{
	1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
	10: "float16", 11: "float64", 16: "bfloat16",
}

// ReadGraphIO reads the declared inputs and outputs of an ONNX model file without ONNX Runtime, so that
// `vlmdiff bundle verify` works on any machine and a bundle is checked before any session is built. The file
// is memory-mapped: large graphs are not copied, and only the small graph header is walked.
func ReadGraphIO(path string) (*GraphIO, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("%s: empty file", path)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	defer syscall.Munmap(data)
	io, err := parseModel(data)
	if err != nil {
		return nil, fmt.Errorf("%s: not a valid ONNX model: %w", path, err)
	}
	return io, nil
}

// walk calls fn for every field of a protobuf message; fn returns the number of bytes it consumed of the
// value or -1 to have the field skipped.
func walk(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var val []byte
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			val, n = v, m
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			val, n = b[:m], m
		}
		if err := fn(num, typ, val); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func parseModel(b []byte) (*GraphIO, error) {
	out := &GraphIO{}
	var graph []byte
	err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 7 && typ == protowire.BytesType: // ModelProto.graph
			graph = v
		case num == 8 && typ == protowire.BytesType: // ModelProto.opset_import
			domain, version := "", int64(0)
			if err := walk(v, func(n protowire.Number, t protowire.Type, w []byte) error {
				switch {
				case n == 1 && t == protowire.BytesType:
					domain = string(w)
				case n == 2 && t == protowire.VarintType:
					x, _ := protowire.ConsumeVarint(w)
					version = int64(x)
				}
				return nil
			}); err != nil {
				return err
			}
			if domain == "" || domain == "ai.onnx" {
				out.Opset = version
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if graph == nil {
		return nil, fmt.Errorf("no graph")
	}
	initializers := map[string]bool{}
	var ins, outs []TensorSpec
	err = walk(graph, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 5: // initializer: TensorProto, name = 8
			return walk(v, func(n protowire.Number, t protowire.Type, w []byte) error {
				if n == 8 && t == protowire.BytesType {
					initializers[string(w)] = true
				}
				return nil
			})
		case 11, 12:
			ts, err := parseValueInfo(v)
			if err != nil {
				return err
			}
			if num == 11 {
				ins = append(ins, ts)
			} else {
				outs = append(outs, ts)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		if !initializers[in.Name] { // IR < 4 lists initializers among the inputs
			out.Inputs = append(out.Inputs, in)
		}
	}
	out.Outputs = outs
	return out, nil
}

func parseValueInfo(b []byte) (TensorSpec, error) {
	var ts TensorSpec
	err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			ts.Name = string(v)
		case num == 2 && typ == protowire.BytesType: // TypeProto
			return walk(v, func(n protowire.Number, t protowire.Type, w []byte) error {
				if n != 1 || t != protowire.BytesType { // tensor_type
					return nil
				}
				ts.Shape = []int64{}
				return walk(w, func(n protowire.Number, t protowire.Type, x []byte) error {
					switch {
					case n == 1 && t == protowire.VarintType:
						et, _ := protowire.ConsumeVarint(x)
						if name, ok := onnxElemTypes[et]; ok {
							ts.Type = name
						} else {
							ts.Type = fmt.Sprintf("onnx-type-%d", et)
						}
					case n == 2 && t == protowire.BytesType: // TensorShapeProto
						return walk(x, func(n protowire.Number, t protowire.Type, d []byte) error {
							if n != 1 || t != protowire.BytesType {
								return nil
							}
							dim := int64(-1) // symbolic or unknown
							if err := walk(d, func(n protowire.Number, t protowire.Type, y []byte) error {
								if n == 1 && t == protowire.VarintType {
									u, _ := protowire.ConsumeVarint(y)
									dim = int64(u)
								}
								return nil
							}); err != nil {
								return err
							}
							ts.Shape = append(ts.Shape, dim)
							return nil
						})
					}
					return nil
				})
			})
		}
		return nil
	})
	return ts, err
}
