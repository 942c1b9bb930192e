#include "cli.hpp"

#include "option_values.hpp"

#include <algorithm>
#include <optional>

namespace bench {

bool command_line::has(std::string_view name) const {
    return std::find(given.begin(), given.end(), name) != given.end();
}

command_line parse_command_line(std::span<const option_spec> table, int argc, const char* const* argv, options& o) {
    command_line out;
    auto spec_of = [&](std::string_view name) -> const option_spec* {
        for (const auto& s : table)
            if (s.name == name) return &s;
        return nullptr;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "-h") {
            out.help = true;
            return out;
        }
        if (arg.substr(0, 2) != "--") throw usage_error("unexpected argument " + quoted(arg) + " (try --help)");
        std::string_view name = arg;
        std::optional<std::string_view> value;
        if (auto eq = arg.find('='); eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
        }
        const option_spec* spec = spec_of(name);
        if (spec == nullptr) throw usage_error("unknown option " + quoted(name) + " (try --help)");
        if (spec->set == nullptr) {
            out.help = true;
            return out;
        }
        if (out.has(name)) fail(name, "given twice");
        out.given.emplace_back(name);
        if (spec->arg.empty()) {
            if (value) fail(name, "takes no value");
            value = std::string_view{};
        } else if (!value) {
            if (i + 1 >= argc) fail(name, "needs a value (try --help)");
            value = argv[++i];
        }
        spec->set(o, name, *value);
    }
    for (const auto& s : table)
        if (s.applies_fallback && !out.has(s.name)) s.set(o, s.name, s.fallback);
    return out;
}

namespace {

constexpr std::size_t help_column = 27;  // where the help text starts
constexpr std::size_t right_edge = 78;    // where defaults end

// Splits `text` into lines of at most `width` characters, at spaces.
std::vector<std::string> wrap(std::string_view text, std::size_t width) {
    std::vector<std::string> lines(1);
    for (auto word : split(text, ' ')) {
        if (word.empty()) continue;
        if (!lines.back().empty() && lines.back().size() + 1 + word.size() > width) lines.emplace_back();
        if (!lines.back().empty()) lines.back() += ' ';
        lines.back() += word;
    }
    return lines;
}

}  // namespace

std::string format_help(std::span<const option_spec> table, std::string_view intro, std::string_view outro) {
    std::string out(intro);
    std::string_view section;
    for (const auto& s : table) {
        if (s.section != section) {
            section = s.section;
            out += cat("\n", section, ":\n");
        }
        std::string left = cat("  ", s.name, s.arg.empty() ? "" : " ", s.arg);
        auto lines = wrap(s.help, right_edge - help_column);
        if (!s.fallback.empty()) {
            const std::string shown = cat("[", s.fallback, "]");
            if (lines.back().size() + 2 + shown.size() > right_edge - help_column) lines.emplace_back();
            lines.back().append(right_edge - help_column - lines.back().size() - shown.size(), ' ');
            lines.back() += shown;
        }
        if (left.size() + 2 > help_column) {
            out += left + "\n";
            left.clear();
        }
        for (const auto& line : lines) {
            left.resize(help_column, ' ');
            out += left + line + "\n";
            left.clear();
        }
    }
    return out += outro;
}

}  // namespace bench
