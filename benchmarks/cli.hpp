#pragma once

// A command line described by a table: each option's name, argument, help,
// default and setter. The parser walks the table and knows no option by
// name; --help is generated from the same table.

#include "options.hpp"

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

struct option_spec {
    std::string_view section;   // heading in --help; a section's options are consecutive
    std::string_view name;      // "--op"
    std::string_view arg;       // "read|write"; empty: a flag, which takes no value
    std::string_view help;      // one paragraph; --help wraps it
    std::string_view fallback;  // the default, shown as [fallback]; empty: none shown
    bool applies_fallback;      // when absent, the parser hands `fallback` to `set`
    // Validates the value and stores it; throws usage_error naming `name`.
    // Null for --help. A flag's setter gets an empty value.
    void (*set)(options& o, std::string_view name, std::string_view value);
};

struct command_line {
    bool help = false;
    std::vector<std::string> given;  // the options given, in order
    [[nodiscard]] bool has(std::string_view name) const;
};

/// Walks argv against `table` into `o`: --name VALUE or --name=VALUE, each
/// option at most once; then hands the defaults of absent options to their
/// setters. Stops at --help (or -h).
command_line parse_command_line(std::span<const option_spec> table, int argc, const char* const* argv, options& o);

/// `intro`, then every option of `table` by section, wrapped, with its
/// default, then `outro`.
std::string format_help(std::span<const option_spec> table, std::string_view intro, std::string_view outro);

}  // namespace bench
