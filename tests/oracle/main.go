// Command oracle is lazypull's interoperability oracle: a thin wrapper around Debian's packaged
// github.com/containerd/stargz-snapshotter/estargz (v0.12), so Python tests can ask the reference Go
// implementation to verify a blob or to build one. Output is JSON on stdout; errors go to stderr with
// exit status 1. It is built in GOPATH mode by tests/oracle/build.sh.
//
//	oracle verify BLOB [--toc-digest D]
//	oracle build TAR OUT [--chunk-size N] [--level N] [--prioritized a,b,c] [--zstdchunked] [--procs N]
package main

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// treeEntry is one path of the layer's file tree as the Go reader presents it. Hardlinks are
// resolved to their target (as the snapshotter does); HardlinkOf names that target.
type treeEntry struct {
	Name       string            `json:"name"`
	Type       string            `json:"type"`
	Size       int64             `json:"size"`
	Mode       int64             `json:"mode"`
	UID        int               `json:"uid"`
	GID        int               `json:"gid"`
	UserName   string            `json:"userName"`
	GroupName  string            `json:"groupName"`
	LinkName   string            `json:"linkName"`
	ModTime    string            `json:"modtime"`
	DevMajor   int               `json:"devMajor"`
	DevMinor   int               `json:"devMinor"`
	Xattrs     map[string][]byte `json:"xattrs"`
	Digest     string            `json:"digest,omitempty"`
	TOCDigest  string            `json:"tocFileDigest,omitempty"`
	Chunks     int               `json:"chunks,omitempty"`
	NumLink    int               `json:"numLink"`
	HardlinkOf string            `json:"hardlinkOf,omitempty"`
}

type verifyResult struct {
	TOCDigest   string      `json:"tocDigest"`
	TOCVerified bool        `json:"tocVerified"`
	Entries     []treeEntry `json:"entries"`
}

type buildResult struct {
	BlobDigest       string            `json:"blobDigest"`
	BlobSize         int64             `json:"blobSize"`
	TOCDigest        string            `json:"tocDigest"`
	DiffID           string            `json:"diffID"`
	UncompressedSize int64             `json:"uncompressedSize"`
	Missed           []string          `json:"missed"`
	Annotations      map[string]string `json:"annotations"`
}

func main() {
	runtime.GOMAXPROCS(1) // Build's member layout depends on it; pinned for reproducible output
	if len(os.Args) < 2 {
		fail(errors.New("usage: oracle verify BLOB [--toc-digest D] | oracle build TAR OUT [options]"))
	}
	var out interface{}
	var err error
	switch os.Args[1] {
	case "verify":
		out, err = cmdVerify(os.Args[2:])
	case "build":
		out, err = cmdBuild(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "oracle: %v\n", err)
	os.Exit(1)
}

// splitArgs separates positional arguments from flags so flags may follow positionals.
func splitArgs(fs *flag.FlagSet, args []string, npos int) ([]string, error) {
	var pos, flags []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "--") || (strings.HasPrefix(a, "-") && len(a) > 1) {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !isBoolFlag(fs, a) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	if len(pos) != npos {
		return nil, fmt.Errorf("%s: want %d positional arguments, got %d", fs.Name(), npos, len(pos))
	}
	return pos, nil
}

func isBoolFlag(fs *flag.FlagSet, a string) bool {
	f := fs.Lookup(strings.TrimLeft(a, "-"))
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func cmdVerify(args []string) (interface{}, error) {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	tocDigest := fs.String("toc-digest", "", "expected TOC digest (sha256:...)")
	pos, err := splitArgs(fs, args, 1)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sr := io.NewSectionReader(f, 0, st.Size())
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", pos[0], err)
	}
	res := verifyResult{TOCDigest: r.TOCDigest().String()}
	var v estargz.TOCEntryVerifier
	if *tocDigest != "" {
		d, err := digest.Parse(*tocDigest)
		if err != nil {
			return nil, fmt.Errorf("bad --toc-digest: %w", err)
		}
		if v, err = r.VerifyTOC(d); err != nil {
			return nil, fmt.Errorf("verify TOC of %s: %w", pos[0], err)
		}
		res.TOCVerified = true
	} else if v, err = r.Verifiers(); err != nil {
		return nil, fmt.Errorf("chunk verifiers of %s: %w", pos[0], err)
	}
	root, ok := r.Lookup("")
	if !ok {
		return nil, errors.New("no root directory")
	}
	contentDigests := map[*estargz.TOCEntry]string{}
	chunkCounts := map[*estargz.TOCEntry]int{}
	var walk func(p string, e *estargz.TOCEntry) error
	walk = func(p string, e *estargz.TOCEntry) error {
		te := treeEntry{
			Name: p, Type: e.Type, Size: e.Size, Mode: e.Mode, UID: e.UID, GID: e.GID,
			UserName: e.Uname, GroupName: e.Gname, LinkName: e.LinkName, ModTime: e.ModTime3339,
			DevMajor: e.DevMajor, DevMinor: e.DevMinor, Xattrs: e.Xattrs, NumLink: e.NumLink,
			TOCDigest: e.Digest,
		}
		if te.Xattrs == nil {
			te.Xattrs = map[string][]byte{}
		}
		if e.Name != p {
			te.HardlinkOf = e.Name
		}
		if e.Type == "reg" {
			d, ok := contentDigests[e]
			if !ok {
				n, err := readVerified(r, v, e)
				if err != nil {
					return err
				}
				d = n.digest
				contentDigests[e] = d
				chunkCounts[e] = n.chunks
			}
			te.Digest = d
			te.Chunks = chunkCounts[e]
		}
		res.Entries = append(res.Entries, te)
		if e.Type != "dir" {
			return nil
		}
		var names []string
		kids := map[string]*estargz.TOCEntry{}
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			names = append(names, base)
			kids[base] = c
			return true
		})
		sort.Strings(names)
		for _, n := range names {
			if err := walk(path.Join(p, n), kids[n]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return nil, err
	}
	return res, nil
}

// zstdCompression pairs the zstd:chunked compressor and decompressor into an estargz.Compression,
// as the converter (nativeconverter/zstdchunked) does.
type zstdCompression struct {
	*zstdchunked.Decompressor
	*zstdchunked.Compressor
}

type readStats struct {
	digest string
	chunks int
}

// readVerified reads a regular file chunk by chunk, checking each chunk against its chunkDigest the
// way the snapshotter does before serving data, and returns the sha256 of the whole content.
func readVerified(r *estargz.Reader, v estargz.TOCEntryVerifier, e *estargz.TOCEntry) (readStats, error) {
	sr, err := r.OpenFile(e.Name)
	if err != nil {
		return readStats{}, fmt.Errorf("open file %q: %w", e.Name, err)
	}
	whole := sha256.New()
	var off int64
	n := 0
	for off < e.Size {
		ce, ok := r.ChunkEntryForOffset(e.Name, off)
		if !ok {
			return readStats{}, fmt.Errorf("file %q: no chunk at offset %d", e.Name, off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			return readStats{}, fmt.Errorf("file %q: chunk at %d has offset %d size %d",
				e.Name, off, ce.ChunkOffset, ce.ChunkSize)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			return readStats{}, fmt.Errorf("file %q chunk %d: %w", e.Name, off, err)
		}
		buf := make([]byte, ce.ChunkSize)
		if _, err := sr.ReadAt(buf, ce.ChunkOffset); err != nil && !(errors.Is(err, io.EOF) &&
			ce.ChunkOffset+ce.ChunkSize == e.Size) {
			return readStats{}, fmt.Errorf("file %q read chunk at %d: %w", e.Name, off, err)
		}
		if _, err := cv.Write(buf); err != nil {
			return readStats{}, err
		}
		if !cv.Verified() {
			return readStats{}, fmt.Errorf("file %q: invalid chunk at offset %d (size %d)", e.Name, off, ce.ChunkSize)
		}
		whole.Write(buf)
		off += ce.ChunkSize
		n++
	}
	d := "sha256:" + hex.EncodeToString(whole.Sum(nil))
	if e.Digest != "" && e.Digest != d {
		return readStats{}, fmt.Errorf("file %q: content digest %s, TOC says %s", e.Name, d, e.Digest)
	}
	return readStats{digest: d, chunks: n}, nil
}

func cmdBuild(args []string) (interface{}, error) {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	chunkSize := fs.Int("chunk-size", 0, "chunk size (0 = default 4 MiB)")
	level := fs.Int("level", -100, "compression level (default: gzip 9, zstd 3)")
	prioritized := fs.String("prioritized", "", "comma-separated prioritized files")
	zstdChunked := fs.Bool("zstdchunked", false, "build zstd:chunked instead of eStargz")
	procs := fs.Int("procs", 1, "GOMAXPROCS for Build: it cuts the tar into that many parts")
	pos, err := splitArgs(fs, args, 2)
	if err != nil {
		return nil, err
	}
	if *procs < 1 {
		return nil, fmt.Errorf("--procs %d: must be at least 1", *procs)
	}
	runtime.GOMAXPROCS(*procs)
	in, err := os.Open(pos[0])
	if err != nil {
		return nil, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	missed := []string{}
	opts := []estargz.Option{
		estargz.WithChunkSize(*chunkSize),
		estargz.WithAllowPrioritizeNotFound(&missed),
	}
	if *prioritized != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prioritized, ",")))
	}
	annotations := map[string]string{}
	if *zstdChunked {
		lvl := zstd.SpeedDefault
		if *level != -100 {
			lvl = zstd.EncoderLevelFromZstd(*level)
		}
		opts = append(opts, estargz.WithCompression(&zstdCompression{
			new(zstdchunked.Decompressor),
			&zstdchunked.Compressor{CompressionLevel: lvl, Metadata: annotations},
		}))
	} else if *level != -100 {
		opts = append(opts, estargz.WithCompressionLevel(*level))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", pos[0], err)
	}
	out, err := os.Create(pos[1])
	if err != nil {
		return nil, err
	}
	defer out.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), blob)
	if err != nil {
		return nil, err
	}
	if err := blob.Close(); err != nil {
		return nil, err
	}
	if err := out.Sync(); err != nil {
		return nil, err
	}
	usize, udigest, err := uncompressed(pos[1], *zstdChunked)
	if err != nil {
		return nil, err
	}
	if udigest != blob.DiffID().String() {
		return nil, fmt.Errorf("DiffID %s differs from decompressed output %s", blob.DiffID(), udigest)
	}
	annotations[estargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
	annotations[estargz.StoreUncompressedSizeAnnotation] = fmt.Sprintf("%d", usize)
	return buildResult{
		BlobDigest: "sha256:" + hex.EncodeToString(h.Sum(nil)), BlobSize: n,
		TOCDigest: blob.TOCDigest().String(), DiffID: blob.DiffID().String(),
		UncompressedSize: usize, Missed: missed, Annotations: annotations,
	}, nil
}

// uncompressed decompresses a whole blob (all gzip members / zstd frames) for its size and digest.
func uncompressed(p string, isZstd bool) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	var r io.Reader
	if isZstd {
		d, err := zstd.NewReader(f)
		if err != nil {
			return 0, "", err
		}
		defer d.Close()
		r = d
	} else {
		g, err := gzip.NewReader(f)
		if err != nil {
			return 0, "", err
		}
		defer g.Close()
		r = g
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return 0, "", fmt.Errorf("decompress %s: %w", p, err)
	}
	return n, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
