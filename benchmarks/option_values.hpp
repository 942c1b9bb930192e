#pragma once

// How option values are read: numbers, sizes, choices and lists, each
// failing with a usage_error that names the option. Shared by the option
// table (option_table.cpp) and the settings the target receives.

#include "options.hpp"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

[[noreturn]] void fail(std::string_view option, const std::string& problem);
std::string quoted(std::string_view s);
std::vector<std::string_view> split(std::string_view text, char sep);

std::uint64_t parse_uint(std::string_view option, std::string_view text, std::uint64_t min, std::uint64_t max);
double parse_seconds(std::string_view option, std::string_view text, double min, double max);

template <class E>
E parse_choice(std::string_view option, std::string_view text, std::initializer_list<std::pair<const char*, E>> choices) {
    std::string all;
    for (const auto& [name, value] : choices) {
        if (text == name) return value;
        all += all.empty() ? "" : "|";
        all += name;
    }
    fail(option, "expected " + all + ", got " + quoted(text));
}

/// --mode bw|lat|step|both|all, or a list of bw, lat and step.
mode_set parse_modes(std::string_view option, std::string_view v);
progress_kind parse_progress(std::string_view option, std::string_view v);
/// --memory host | cuda | cuda,host | host,cuda: sets both buffer kinds and
/// the memory policy.
void parse_memory(std::string_view option, std::string_view v, options& o);
path_kind parse_path(std::string_view option, std::string_view v);
baseline_kind parse_baseline(std::string_view option, std::string_view v);
mem_kind parse_mem(std::string_view option, std::string_view v);
bool parse_error_handling(std::string_view option, std::string_view v);

/// Fails now, not after a long sweep, when an output file cannot be created.
void check_writable(std::string_view option, const std::string& path);
bool on_path(const char* program);

}  // namespace bench
