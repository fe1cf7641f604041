# Kaldi-style option parsing, to be sourced after a block of defaults:
#
#   stage=1
#   stop_stage=8
#   . tools/parse_options.sh
#
# Each "--name value" or "--name=value" sets the shell variable "name" (dashes become underscores, so
# --stop-stage and --stop_stage both set stop_stage). Only variables that already exist can be set:
# an unknown option is an error. A variable whose default is true/false only accepts true/false.
# "--help" prints $help_message (when set) and the options with their current values, then exits.
# Parsing stops at the first argument that does not start with "--"; the rest stay in "$@".

__po_usage() {
  if [ -n "${help_message:-}" ]; then printf '%s\n' "$help_message"; fi
  if [ -n "${__po_names:-}" ]; then
    echo "Options (current values):"
    for __po_n in $__po_names; do printf '  --%-22s %s\n' "$__po_n" "${!__po_n}"; done
  fi
}

# Names of the variables that exist before parsing (the defaults block), for --help.
__po_names=${parse_options_names:-}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      __po_usage
      exit 0 ;;
    --*=*)
      __po_name=${1%%=*}; __po_value=${1#*=}; shift ;;
    --*)
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2
        exit 1
      fi
      __po_name=$1; __po_value=$2; shift 2 ;;
    *)
      break ;;
  esac
  __po_name=${__po_name#--}
  __po_name=${__po_name//-/_}
  case "$__po_name" in
    ''|[0-9]*|*[!A-Za-z0-9_]*)
      echo "$0: invalid option name '--$__po_name'" >&2
      exit 1 ;;
  esac
  if [ -z "${!__po_name+set}" ]; then
    echo "$0: unknown option --$__po_name (run with --help to list the options)" >&2
    exit 1
  fi
  __po_old=${!__po_name}
  if [ "$__po_old" = true ] || [ "$__po_old" = false ]; then
    if [ "$__po_value" != true ] && [ "$__po_value" != false ]; then
      echo "$0: option --$__po_name takes true or false, got '$__po_value'" >&2
      exit 1
    fi
  fi
  printf -v "$__po_name" '%s' "$__po_value"
done
unset __po_name __po_value __po_old __po_n
true
