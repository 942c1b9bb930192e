#pragma once

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 2
#define FERRY_VERSION_PATCH 0

// Every public name lives in an inline namespace tagged with the version, so
// that translation units built against different ferry versions fail to link
// together instead of silently sharing mismatched layouts.
#define FERRY_ABI_TAG_CONCAT_(a, b, c) v##a##_##b##_##c
#define FERRY_ABI_TAG_(a, b, c) FERRY_ABI_TAG_CONCAT_(a, b, c)
#define FERRY_ABI_TAG FERRY_ABI_TAG_(FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH)

#define FERRY_NAMESPACE_BEGIN \
    namespace ferry {         \
    inline namespace FERRY_ABI_TAG {
#define FERRY_NAMESPACE_END \
    }                       \
    }

FERRY_NAMESPACE_BEGIN

struct version_info {
    int major;
    int minor;
    int patch;
};

inline constexpr version_info version{FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH};

FERRY_NAMESPACE_END
