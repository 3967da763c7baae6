package server

import (
	_ "embed"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// gatewayDescriptors is proto/'s descriptor set with its source info, the
// comments of every message, field and enum, written by `make generate`
// (buf build --as-file-descriptor-set). The descriptors compiled into gen/
// carry no comments, so reflection served from them alone would make
// `grpcurl describe` print bare declarations.
//
//go:embed descriptor.binpb
var gatewayDescriptors []byte

// documentedFiles resolves the gateway's files, and the well-known types
// they import, from gatewayDescriptors, and every other file (health,
// reflection) from the compiled-in registry.
type documentedFiles struct {
	own *protoregistry.Files
}

func (d documentedFiles) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if fd, err := d.own.FindFileByPath(path); err == nil {
		return fd, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (d documentedFiles) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if desc, err := d.own.FindDescriptorByName(name); err == nil {
		return desc, nil
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}

// registerReflection serves gRPC reflection, v1 and v1alpha so that old and
// new grpcurl alike can list and describe the API, from the documented
// descriptors.
func registerReflection(s *grpc.Server) error {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(gatewayDescriptors, &set); err != nil {
		return fmt.Errorf("reading the embedded API descriptors: %w", err)
	}
	own, err := protodesc.NewFiles(&set)
	if err != nil {
		return fmt.Errorf("reading the embedded API descriptors: %w", err)
	}
	opts := reflection.ServerOptions{Services: s, DescriptorResolver: documentedFiles{own: own}}
	reflectionv1.RegisterServerReflectionServer(s, reflection.NewServerV1(opts))
	reflectionv1alpha.RegisterServerReflectionServer(s, reflection.NewServer(opts)) //nolint:staticcheck // v1alpha for older grpcurl
	return nil
}
