#
# Cookbook:: backup_agent
# Library:: secrets
#
# Loads bucket and credentials from the encrypted data bag item backup_agent/<chef_environment>
# (fallback item `default`). Every failure becomes one SecretsError whose message names the bag,
# the item and, where it applies, the key: the converge stops before anything is changed.

require 'chef/encrypted_data_bag_item'

module BackupAgentCookbook
  class SecretsError < StandardError; end

  module Secrets
    KEYS = %w(bucket region access_key_id secret_access_key kms_key_id endpoint_url).freeze
    REQUIRED = %w(bucket).freeze

    module_function

    # dsl:      anything with Chef's data_bag / data_bag_item (a recipe)
    # settings: node['backup_agent']['data_bag']
    def load(dsl, settings, environment)
      bag = settings['name']
      candidates = item_candidates(settings, environment)
      item_name = find_item(dsl, bag, candidates)
      secret_file = settings['secret_file'] || Chef::Config[:encrypted_data_bag_secret] ||
                    '(none: encrypted_data_bag_secret is not set)'
      where = "data bag item '#{bag}/#{item_name}'"

      secret = load_secret(settings['secret_file'], where) if settings['secret_file']
      item = fetch_item(dsl, bag, item_name, secret, where, secret_file)
      if settings['require_encrypted'] && !item.is_a?(Chef::EncryptedDataBagItem)
        raise SecretsError, "backup_agent: #{where} is not encrypted; create it with `knife data bag " \
                            "from file #{bag} ITEM.json --secret-file FILE` (or set " \
                            "node['backup_agent']['data_bag']['require_encrypted'] to false)"
      end

      values = read_values(item, where, secret_file)
      check(values, where)
      values.freeze
    end

    def item_candidates(settings, environment)
      return [settings['item']] if settings['item']
      [environment, settings['fallback_item']].compact.uniq
    end

    def find_item(dsl, bag, candidates)
      items = begin
                Array(dsl.data_bag(bag))
              rescue StandardError => e
                raise SecretsError, "backup_agent: cannot read data bag '#{bag}' (looking for item " \
                                    "'#{candidates.join("' or '")}'): #{e.class}: #{first_line(e)}"
              end
      found = candidates.find { |name| items.include?(name) }
      return found if found

      raise SecretsError, "backup_agent: data bag '#{bag}' has no item '#{candidates.join("' nor fallback item '")}' " \
                          "(it has: #{items.empty? ? 'none' : items.sort.join(', ')})"
    end

    def load_secret(path, where)
      Chef::EncryptedDataBagItem.load_secret(path)
    rescue StandardError => e
      raise SecretsError, "backup_agent: cannot load the secret for #{where} from #{path}: #{first_line(e)}"
    end

    def fetch_item(dsl, bag, item_name, secret, where, secret_file)
      dsl.data_bag_item(bag, item_name, secret)
    rescue StandardError => e
      raise SecretsError, "backup_agent: cannot load #{where} (secret file #{secret_file}): " \
                          "#{e.class}: #{first_line(e)}"
    end

    # An encrypted item decrypts value by value on access, so a wrong secret shows up here.
    def read_values(item, where, secret_file)
      KEYS.each_with_object({}) do |key, values|
        value = begin
                  item[key]
                rescue StandardError => e
                  raise SecretsError, "backup_agent: cannot decrypt key '#{key}' of #{where} with the " \
                                      "secret from #{secret_file} (is it the secret the item was " \
                                      "encrypted with?): #{e.class}"
                end
        next if value.nil? || value.to_s.strip.empty?
        unless value.is_a?(String)
          raise SecretsError, "backup_agent: key '#{key}' of #{where} must be a string, got #{value.class}"
        end
        values[key] = value
      end
    end

    def check(values, where)
      REQUIRED.each do |key|
        raise SecretsError, "backup_agent: #{where} has no key '#{key}'" unless values.key?(key)
      end
      # Both keys, or neither (instance-profile mode): half a key pair is always a mistake.
      pair = %w(access_key_id secret_access_key)
      present = pair.select { |key| values.key?(key) }
      return if present.empty? || present.size == pair.size

      missing = (pair - present).first
      raise SecretsError, "backup_agent: #{where} has no key '#{missing}' (it has '#{present.first}'; " \
                          'give both keys, or neither to use the instance profile)'
    end

    def first_line(error)
      error.message.to_s.lines.first.to_s.strip
    end
  end
end
