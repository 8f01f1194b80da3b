# Source a recipe (runs/*.sh) without doing its work, for tests/test_recipes.py: every reverie command it would run
# is written to OUTFILE instead (expanded as bash would, NUL-separated words, one command per line), and commands
# that act on the outputs of earlier ones (ln, cp, tail, wait, ...) are skipped. Everything else runs: variable
# defaults, the recipe's own functions, `python3 -c` helpers, mkdir and log lines. bash's extdebug skips a command
# whose DEBUG trap returns non-zero; `set -e` is skipped with them, so a skipped command does not end the recipe.
#
#   bash tests/recipe_argv.sh RECIPE OUTFILE [RECIPE ARGS...]
__out=$2
: > "$__out"
shopt -s extdebug
__recipe_check() {
  local c=$BASH_COMMAND words first
  c=${c%%[0-9]>*}; c=${c%%>*}; c=${c%%<*}
  read -r -a words <<< "$c"
  while [[ ${#words[@]} -gt 0 && ${words[0]} == [A-Za-z_]*=* && ${words[0]} != *'('* ]]; do words=("${words[@]:1}"); done
  [[ ${#words[@]} -eq 0 ]] && return 0
  first=${words[0]}
  case "$first" in
    reverie|torchrun|'$REVERIE'|'"$REVERIE"')
      eval "local __argv=( ${words[*]} )"
      printf '%s\0' "${__argv[@]}" >> "$__out"; printf '\n' >> "$__out"
      return 1;;
    python3)
      [[ ${words[1]:-} == -c ]] && return 0
      [[ ${words[1]:-} == -m && ${words[2]:-} == reverie_cli ]] && {
        eval "local __argv=( ${words[*]} )"; printf '%s\0' "${__argv[@]}" >> "$__out"; printf '\n' >> "$__out"; }
      return 1;;
    set|ln|cp|mv|rm|tail|head|wait|ls|cat|sleep|kill|nvidia-smi|exit) return 1;;
  esac
  return 0
}
trap __recipe_check DEBUG
__recipe=$1
shift 2
source "$__recipe" "$@"
