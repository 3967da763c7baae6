package server

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// TestEmbeddedDescriptorsMatchGen: the descriptors reflection serves are
// those compiled into gen/, plus their comments, so a proto/ change without
// `make generate` fails here rather than making describe lie.
func TestEmbeddedDescriptorsMatchGen(t *testing.T) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(gatewayDescriptors, &set); err != nil {
		t.Fatal(err)
	}
	compiled := protodesc.ToFileDescriptorProto(tcpgatev1.File_tcpgate_v1_gateway_proto)
	for _, f := range set.GetFile() {
		if f.GetName() != compiled.GetName() {
			continue
		}
		if f.GetSourceCodeInfo() == nil || len(f.GetSourceCodeInfo().GetLocation()) == 0 {
			t.Fatalf("server/descriptor.binpb: %s has no source info, so describe shows no comments", f.GetName())
		}
		stripped := proto.CloneOf(f)
		stripped.SourceCodeInfo = nil
		if !proto.Equal(stripped, compiled) {
			t.Fatalf("server/descriptor.binpb differs from gen/ for %s: run `make generate`", f.GetName())
		}
		return
	}
	t.Fatalf("server/descriptor.binpb has no %s", compiled.GetName())
}
