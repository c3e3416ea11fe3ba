# Fallback build of the same addon with node-gyp (`npx node-gyp rebuild --nodedir=/usr`).
{
  "targets": [
    {
      "target_name": "migsafe",
      "sources": [
        "addon/src/addon.cc", "addon/src/batch.cc", "addon/src/codecs.cc", "addon/src/fdpass.cc", "addon/src/datapages.cc",
        "addon/src/mapfile.cc", "addon/src/bench.cc",
        "addon/src/cpu.cc", "addon/src/xbzrle_diff.cc", "addon/src/xbzrle_encode.cc", "addon/src/xbzrle_ref.cc",
        "addon/src/crc32c.cc", "addon/src/shuffle.cc", "addon/src/words.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-march=x86-64-v2"],
      "libraries": ["-lzstd", "-llz4", "-lz", "-lpthread"]
    }
  ]
}
